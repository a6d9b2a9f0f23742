import torch
from tiny_models import tiny_cnn


def test_bn_recalibration_matches_batch_statistics():
    from hwprune.apply.channels import recalibrate_bn

    model, x = tiny_cnn()
    model.eval()
    batches = [(torch.randn(4, 3, 8, 8) * 3 + 1, None) for _ in range(3)]
    recalibrate_bn(model, batches)
    feats = torch.cat([model.conv1(b) for b, _ in batches])
    torch.testing.assert_close(model.bn1.running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert model.bn1.momentum == 0.1 and not model.training
