"""Simulated targets: catalog, per-op roofline model, staircase, energy, sparsity, spec validation, calibration."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from helpers import toy_spec

from hwprune.cli.profile import calibration_layers
from hwprune.core.errors import HwpruneError
from hwprune.hardware.sim import (
    OpModel,
    SimulatedTarget,
    calibrate,
    catalog_paths,
    load_spec,
    parse_spec,
    save_spec,
)
from hwprune.hardware.targets import get_target, list_targets

CATALOG = sorted(catalog_paths())


def toy_target(**over) -> SimulatedTarget:
    return SimulatedTarget(parse_spec(toy_spec(**over), "toy.yaml"))


class TinyConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU()
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


def mlp():
    return nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 5))


@pytest.mark.parametrize("name", CATALOG)
def test_catalog_spec_predicts_positive_latency_and_energy(name):
    t = get_target(f"sim:{name}", threads=3)
    assert t.name == f"sim:{name}" and t.memory_capacity > 0
    for model, x in ((TinyConv().eval(), torch.randn(1, 3, 16, 16)), (mlp().eval(), torch.randn(2, 20))):
        lat = t.time_models([model], x)[0]
        assert math.isfinite(lat.median) and lat.median > 0
        assert lat.median == lat.q1 == lat.q3 and lat.n == 1
        e = t.model_energy(model, x)
        assert math.isfinite(e) and e > 0
    assert len(catalog_paths()) >= 6


def test_whole_model_is_sum_of_per_op_model_and_matches_time_layer():
    t = toy_target()
    model, x = TinyConv().eval(), torch.randn(1, 3, 16, 16)
    ops = t.profile(model, x)
    assert [o.op for o in ops] == [
        "Conv2d",
        "BatchNorm2d",
        "ReLU",
        "Conv2d",
        "ReLU",
        "AdaptiveAvgPool2d",
        "Linear",
    ]  # flatten is a view: free
    assert t.time_models([model], x)[0].median == pytest.approx(sum(o.latency_s for o in ops), rel=1e-12)
    conv2_in = torch.randn(1, 8, 16, 16)
    assert t.time_layer(model.features[3], conv2_in).median == pytest.approx(ops[3].latency_s, rel=1e-12)
    assert t.time_layer(model.fc, torch.randn(1, 16)).median == pytest.approx(ops[6].latency_s, rel=1e-12)


def test_roofline_hand_computation():
    t = toy_target()
    # Compute-bound: 3x3 conv 16->16 on 32x32: 1024 px * 16 * 16 * 9 = 2,359,296 MACs at 0.5e12 MAC/s = 4.718592 us;
    # bytes = weights 2304*4 + (in 16384 + out 16384)*4 = 140,288 at 5e10 B/s = 2.80576 us; + 1 us overhead.
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    (c,) = t.layer_cost(conv, torch.randn(1, 16, 32, 32))
    assert c.macs == c.tiled_macs == 2_359_296
    assert c.dram_bytes == 140_288
    assert c.compute_s == pytest.approx(4.718592e-6, rel=1e-12)
    assert c.memory_s == pytest.approx(2.80576e-6, rel=1e-12)
    assert t.time_layer(conv, torch.randn(1, 16, 32, 32)).median == pytest.approx(5.718592e-6, rel=1e-12)
    # Memory-bound: 1x1 conv 16->8 on 32x32: 131,072 MACs = 0.262 us; bytes 512 + (16384 + 8192)*4 = 98,816
    # -> 1.97632 us; + 1 us.
    pw = nn.Conv2d(16, 8, 1, bias=False)
    assert t.time_layer(pw, torch.randn(1, 16, 32, 32)).median == pytest.approx(2.97632e-6, rel=1e-12)
    # Elementwise (BN): (16384 in + 16384 out) * 4 B / 5e10 + 1 us.
    assert t.time_layer(nn.BatchNorm2d(16).eval(), torch.randn(1, 16, 32, 32)).median == pytest.approx(
        3.62144e-6, rel=1e-12
    )


def test_buffer_overflow_rereads_the_cheaper_operand():
    ops = OpModel(parse_spec(toy_spec(onchip_buffer=300), "toy.yaml"), "fp32")
    assert ops.traffic(100, 150) == 250  # fits: each moved once
    assert ops.traffic(100, 1000) == 1100  # weights resident, activations streamed once per weight chunk
    assert ops.traffic(1000, 100) == 1100  # activations resident, weights streamed once per activation chunk
    onchip = OpModel(parse_spec(toy_spec(onchip_buffer=300, memory_model="onchip"), "toy.yaml"), "fp32")
    assert onchip.traffic(100, 150) == 0 and onchip.traffic(1000, 100) == 800


def test_staircase_constant_within_a_tile_and_jumps_at_tile_edges():
    t = toy_target(memory_bandwidth=1.0e15)  # compute-bound everywhere
    x = torch.randn(1, 16, 16, 16)
    lat = {c: t.time_layer(nn.Conv2d(16, c, 3, padding=1), x).median for c in range(9, 34)}
    assert len({lat[c] for c in range(9, 17)}) == 1 and len({lat[c] for c in range(17, 25)}) == 1
    assert lat[17] > lat[16] and lat[25] > lat[24] and lat[33] > lat[32]
    # Input channels are tiled too.
    lin = {c: t.time_layer(nn.Linear(c, 64), torch.randn(64, c)).median for c in (9, 16, 17)}
    assert lin[9] == lin[16] < lin[17]
    # A catalog accelerator (DPU B4096: 16x16 channel parallelism) shows its steps on a compute-bound conv.
    dpu = get_target("sim:zcu102-dpu")
    x = torch.randn(1, 64, 28, 28)
    d = {c: dpu.time_layer(nn.Conv2d(64, c, 3, padding=1), x).median for c in (17, 24, 32, 33)}
    assert d[17] == d[24] == d[32] < d[33]


def test_energy_hand_computation():
    t = toy_target()
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    # 2,359,296 MACs * 1 pJ + 140,288 bytes * 0.1 nJ
    assert t.layer_energy(conv, torch.randn(1, 16, 32, 32)) == pytest.approx(2.359296e-6 + 1.40288e-5, rel=1e-12)
    model = nn.Sequential(conv, nn.ReLU())
    relu_j = 2 * 16384 * 4 * 1e-10
    assert t.model_energy(model, torch.randn(1, 16, 32, 32)) == pytest.approx(2.359296e-6 + 1.40288e-5 + relu_j)


def test_sparsity_factor_only_when_supported():
    t = toy_target(memory_bandwidth=1.0e15)
    x = torch.randn(1, 16, 32, 32)
    conv = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    dense = t.time_layer(conv, x).median
    conv.weight.hwprune_sparsity = "2:4"
    assert t.time_layer(conv, x).median - 1e-6 == pytest.approx((dense - 1e-6) * 0.5, rel=1e-9)
    assert t.time_models([nn.Sequential(conv)], x)[0].median == pytest.approx(t.time_layer(conv, x).median)
    for unsupported in ("unstructured:0.9", "block4x1:0.5", "1:4"):
        conv.weight.hwprune_sparsity = unsupported
        assert t.time_layer(conv, x).median == dense
    # A platform without 2:4 support gets no speed-up from it.
    rpi = get_target("sim:rpi5")
    plain = nn.Conv2d(16, 16, 3, padding=1, bias=False)
    base = rpi.time_layer(plain, x).median
    plain.weight.hwprune_sparsity = "2:4"
    assert rpi.time_layer(plain, x).median == base


def test_functional_attention_and_matmul_are_counted():
    class Attn(nn.Module):
        def forward(self, q):
            a = F.scaled_dot_product_attention(q, q, q)
            return a @ q.transpose(-1, -2)

    t = toy_target()
    q = torch.randn(2, 4, 16, 8)  # batch 2, 4 heads, L=S=16, E=8
    ops = t.profile(Attn(), q)
    assert [o.op for o in ops] == ["sdpa", "matmul"]  # transpose is a view
    assert ops[0].macs == 2 * 4 * 16 * 16 * (8 + 8)
    assert ops[1].macs == 2 * 4 * 16 * 8 * 16


def _write(tmp_path, data, name="board.yaml"):
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data))
    return p


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: d.pop("memory_bandwidth"), "memory_bandwidth"),
        (lambda d: d["dtypes"]["fp32"].pop("peak_ops"), "dtypes.fp32.peak_ops"),
        (lambda d: d["efficiency"].pop("compute"), "efficiency.compute"),
        (lambda d: d.update(memory_bandwidth=-5), "memory_bandwidth"),
        (lambda d: d["dtypes"]["fp32"].update(peak_ops=0), "dtypes.fp32.peak_ops"),
        (lambda d: d.update(onchip_buffer="lots"), "onchip_buffer"),
        (lambda d: d["dtypes"]["fp32"].update(tile_in=2.5), "dtypes.fp32.tile_in"),
        (lambda d: d.update(op_overhead=-1e-6), "op_overhead"),
        (lambda d: d.update(memory_bandwith=1e9), "memory_bandwith"),
    ],
)
def test_spec_errors_name_file_and_field(tmp_path, edit, field):
    d = toy_spec()
    edit(d)
    p = _write(tmp_path, d)
    with pytest.raises(HwpruneError) as e:
        load_spec(p)
    msg = str(e.value)
    assert str(p) in msg and f"'{field}'" in msg and "\n" not in msg


def test_numbers_written_the_yaml_1_1_way_are_accepted(tmp_path):
    p = tmp_path / "b.yaml"
    p.write_text(yaml.safe_dump(toy_spec()).replace("100000000000.0", "1e11"))
    assert "1e11" in p.read_text()
    assert load_spec(p).memory_bandwidth == 1e11


def test_user_yaml_target_and_fingerprint(tmp_path):
    p = _write(tmp_path, toy_spec())
    t = get_target(str(p), threads=4)
    assert t.spec.name == "toy" and t.dtype == "fp32"
    assert t.time_layer(nn.Linear(8, 8), torch.randn(1, 8)).median > 0
    key = t.device_key()
    assert get_target(str(p)).device_key() == key  # deterministic
    _write(tmp_path, toy_spec(op_overhead=2e-6))
    assert get_target(str(p)).device_key() != key  # editing the spec invalidates cached tables
    fp = t.fingerprint()
    assert fp["spec"] == "toy" and fp["dtype"] == "fp32" and fp["spec_hash"]


def test_dtype_override_and_errors():
    h = get_target("sim:h100")
    assert h.dtype == "fp16"
    i8 = get_target("sim:h100", dtype="int8")
    assert i8.dtype == "int8" and i8.device_key() != h.device_key()
    assert get_target("sim:h100", dtype="bfloat16").dtype == "bf16"
    with pytest.raises(HwpruneError, match="has no bf16"):
        get_target("sim:rpi5", dtype="bf16")
    with pytest.raises(HwpruneError, match="unknown simulated target"):
        get_target("sim:no-such-board")
    with pytest.raises(HwpruneError, match="not found"):
        get_target("missing-board.yaml")


def test_list_targets_shows_every_catalog_entry():
    names = {n for n, _ in list_targets()}
    for required in ("h100", "jetson-orin-nano", "rpi5", "xeon-8480", "zcu102-dpu", "hailo8", "coral-edgetpu"):
        assert f"sim:{required}" in names
    assert {f"sim:{n}" for n in CATALOG} <= names


def test_calibrate_fits_the_analytic_target(tmp_path):
    # The analytic-test target (conftest.py) is 1 us + 10 ps per MAC for every conv/linear: a spec with 1x1
    # tiles, 1e11 MAC/s peak and ample bandwidth can match it exactly; start it far off.
    spec = parse_spec(
        toy_spec(
            dtypes={"fp32": {"peak_ops": 2.0e11, "tile_in": 1, "tile_out": 1, "energy_per_mac": 1e-12}},
            op_overhead=2.0e-5,
            efficiency={"compute": 0.2, "bandwidth": 0.5},
            memory_bandwidth=1.0e10,
        ),
        "toy.yaml",
    )
    measured = get_target("analytic-test")
    layers = calibration_layers(TinyConv().eval(), torch.randn(1, 3, 16, 16))
    assert len(layers) >= 6
    fitted, report = calibrate(spec, measured, layers)
    assert report.before_median_pct > 50
    assert report.after_median_pct < 1.0 and report.after_worst_pct < 2.0
    assert fitted.compute_efficiency == pytest.approx(1.0, rel=0.02)
    assert fitted.op_overhead == pytest.approx(1e-6, rel=0.05)
    assert fitted.dtypes == spec.dtypes  # peaks and tiles untouched
    # The fitted spec round-trips through YAML and serves as a target.
    path = save_spec(fitted, tmp_path / "fitted.yaml")
    again = load_spec(path)
    assert again.compute_efficiency == pytest.approx(fitted.compute_efficiency)
    assert again.calibration["median_abs_error_pct"]["after"] == pytest.approx(report.after_median_pct)
    t = get_target(str(path))
    m, x = layers[0]
    assert t.time_layer(m, x).median == pytest.approx(measured.time_layer(m, x).median, rel=0.02)


def test_calibrate_reduces_error_of_a_catalog_spec():
    measured = get_target("analytic-test")
    layers = calibration_layers(mlp().eval(), torch.randn(4, 20), fractions=(0.25, 0.5, 1.0))
    _, report = calibrate(load_spec("sim:rpi5"), measured, layers)
    assert report.after_median_pct < report.before_median_pct
    assert report.after_worst_pct <= report.before_worst_pct
    assert "calibrated rpi5" in report.summary()
