"""Grouped convolutions (groups=g, not depthwise) are pruned in whole conv groups: widths are multiples of g
and the same channels go in every conv group, as torch-pruning slices a grouped conv's input."""

import json

import torch
import torch.nn as nn
from helpers import run_cli

import hwprune
from hwprune.apply.channels import apply_plan
from hwprune.groups.analysis import analyze
from hwprune.importance import compute_scores
from hwprune.plan.plan import make_plan

SOURCE = '''
import torch, torch.nn as nn

class EncDec(nn.Module):
    """An encoder-decoder with grouped convs (groups=4) and a concatenated skip."""

    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1, groups=4), nn.BatchNorm2d(64), nn.ReLU())
        self.mid = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1, groups=4), nn.BatchNorm2d(64), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2)
        self.dec = nn.Sequential(nn.Conv2d(96, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        a = self.enc1(x)
        return self.head(self.dec(torch.cat([self.up(self.mid(self.enc2(a))), a], 1)))

def net():
    return EncDec(), torch.randn(2, 3, 16, 16)
'''


def _net(tmp_path):
    (tmp_path / "encdec.py").write_text(SOURCE)
    ns: dict = {}
    exec(SOURCE, ns)
    torch.manual_seed(0)
    return ns["net"]()


def test_every_group_is_found_with_widths_in_whole_conv_groups(tmp_path):
    model, x = _net(tmp_path)
    groups = {g.id: g for g in analyze(model, x).groups}
    assert set(groups) == {"enc1.0", "enc2.0", "mid.0", "dec.0"}  # was only dec.0
    for gid in ("enc1.0", "enc2.0", "mid.0"):
        assert groups[gid].multiple == 4 and all(w % 4 == 0 for w in groups[gid].candidates)
    assert groups["dec.0"].multiple == 1


def test_a_plan_keeps_the_same_channels_in_every_conv_group_and_computes_the_same(tmp_path):
    model, x = _net(tmp_path)
    model.eval()
    a = analyze(model, x)
    scores = compute_scores(model, a, "l1")
    plan = make_plan({"enc1.0": 18}, scores, {"enc1.0": 32}, a.multiples)  # rounded down to 16
    (g,) = plan.groups
    assert g.width == 16 and [i % 8 for i in g.keep[:4]] == [i % 8 for i in g.keep[4:8]]
    pruned = apply_plan(model, x, plan)
    dropped = sorted(set(range(32)) - set(g.keep))

    def zero(mod, args, out):  # the dense model with enc1's dropped channels silenced
        out = out.clone()
        out[:, dropped] = 0
        return out

    handle = model.enc1.register_forward_hook(zero)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), model(x))
    handle.remove()


def test_the_encoder_decoder_prunes_to_half_its_macs_and_reloads(tmp_path, capsys):
    _net(tmp_path)
    out = tmp_path / "o"
    argv = ["prune", "--model", f"{tmp_path}/encdec.py:net", "--budget", "macs=0.5", "--target", "analytic-test"]
    code, _, err = run_cli(capsys, *argv, "--quiet", "--out", out)
    assert code == 0, err
    r = json.loads((out / "report.json").read_text())
    # Widths move in steps of 4 channels here (groups of 32 and 64): 92% of the limit is the closest plan found.
    assert 0.85 <= r["budgets"][0]["used"] <= 1.0 and len(r["groups"]) == 4
    back = hwprune.load(out / "model", trust_code=True)
    for name in ("enc2.0", "mid.0"):
        conv = back.get_submodule(name)
        assert isinstance(conv, nn.Conv2d) and conv.groups == 4 and conv.out_channels % 4 == 0
    assert back(torch.randn(1, 3, 16, 16)).shape == (1, 4, 16, 16)
