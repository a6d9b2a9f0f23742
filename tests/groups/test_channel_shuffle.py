"""ShuffleNetV2's channel shuffle: torch-pruning 1.6.0 cannot trace through it (ZeroDivisionError on the
shuffle's view). The graph is traced with those reshapes left unmapped and no group crosses a shuffle, so
what is pruned is the stem, the last conv and each block's inner branch width, and a cut computes what the
dense model computes with those channels silenced."""

import pytest
import torch
import torchvision

import hwprune
from hwprune.apply.channels import apply_plan
from hwprune.cost.resources import count
from hwprune.groups.analysis import analyze
from hwprune.importance import compute_scores
from hwprune.plan.plan import make_plan


def _net():
    torch.manual_seed(0)
    return torchvision.models.shufflenet_v2_x0_5(num_classes=10).eval(), torch.randn(2, 3, 32, 32)


@pytest.fixture(scope="module")
def analysed():
    model, x = _net()
    return model, x, analyze(model, x)


def test_groups_stop_at_the_shuffle(analysed):
    ids = [g.id for g in analysed[2].groups]
    # the stem, the last conv, and the inner width of the second branch of each of the 16 blocks
    assert ids[0] == "conv1.0" and ids[-1] == "conv5.0" and len(ids) == 18
    assert all(i.endswith(".branch2.3") for i in ids[1:-1])


def test_cutting_a_branch_equals_silencing_its_channels(analysed):
    model, x, a = analysed
    gid = "stage3.2.branch2.3"
    size = a.group(gid).size
    plan = make_plan({gid: size // 2}, compute_scores(model, a, "l1"), {gid: size}, a.multiples)
    pruned = apply_plan(model, x, plan)
    dropped = sorted(set(range(size)) - set(plan.groups[0].keep))

    def silence(mod, args, out):  # the BN after the depthwise conv feeds the branch's last 1x1 conv
        out = out.clone()
        out[:, dropped] = 0
        return out

    handle = model.stage3[2].branch2[4].register_forward_hook(silence)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x))
    handle.remove()


def test_shufflenet_prunes_to_half_its_macs_and_reloads(tmp_path):
    model, x = _net()
    res = hwprune.prune(model, x, budget="macs=0.5", target="analytic-test", progress=False)
    used = count("macs", res.model, x) / (0.5 * count("macs", model, x))
    assert 0.97 <= used <= 1.0
    res.save(tmp_path / "m")
    back = hwprune.load(tmp_path / "m" / "model", model=torchvision.models.shufflenet_v2_x0_5(num_classes=10))
    with torch.no_grad():
        torch.testing.assert_close(back(x), res.model(x), rtol=0, atol=0)
