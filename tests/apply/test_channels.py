import torch
from helpers import uniformly_pruned
from tiny_models import tiny_cnn


def test_apply_removes_channels_physically():
    model, x, plan, pruned = uniformly_pruned(tiny_cnn)
    assert pruned.conv1.out_channels == 8 and pruned.conv2.in_channels == 8 and pruned.bn1.num_features == 8
    assert pruned.conv2.out_channels == 12 and pruned.fc.in_features == 12 and pruned.fc.out_features == 5
    assert model.conv1.out_channels == 16  # the dense model is untouched
    assert pruned(x).shape == (2, 5)
    # Kept channels are the plan's: conv1's kept filters are copied unchanged.
    keep = plan.groups[[g.id for g in plan.groups].index("conv1")].keep
    torch.testing.assert_close(pruned.conv1.weight, model.conv1.weight[keep])
