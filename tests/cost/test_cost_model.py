import numpy as np
import pytest
from tiny_models import tiny_cnn, tiny_resnet

from hwprune.cost.curves import Profiler
from hwprune.cost.model import CostModel
from hwprune.groups.analysis import analyze
from hwprune.hardware.table import LatencyCache
from hwprune.hardware.targets import get_target


def test_cost_model_sums_curves_and_fits_remainder(tmp_path):
    model, x = tiny_cnn()
    a = analyze(model, x)
    curves = Profiler(get_target("cpu", threads=1), LatencyCache(tmp_path / "c.sqlite"), False).build(a)
    cm = CostModel(a, curves)
    dense = cm.dense_widths()
    layer_sum = cm.layer_sum(dense)
    assert layer_sum == pytest.approx(
        sum(c(la.in_channels, la.out_channels) for la, c in ((la, curves[la.name]) for la in a.layers))
    )
    cm.add_measurement(dense, layer_sum + 1e-3)
    assert cm.predict(dense) == pytest.approx(layer_sum + 1e-3)
    half = {g: max(2, s // 2) for g, s in dense.items()}
    cm.add_measurement(half, cm.layer_sum(half) + 0.6e-3)
    assert cm.predict(half) == pytest.approx(cm.layer_sum(half) + 0.6e-3)
    assert cm.predict(dense) == pytest.approx(layer_sum + 1e-3)


def test_remainder_never_makes_narrower_plans_slower(tmp_path):
    """If the table overestimates the dense model, predictions still fall as widths shrink."""
    model, x = tiny_cnn()
    a = analyze(model, x)
    curves = Profiler(get_target("analytic-test"), LatencyCache(tmp_path / "c.sqlite"), False).build(a)
    cm = CostModel(a, curves)
    dense = cm.dense_widths()
    cm.add_measurement(dense, 0.5 * cm.layer_sum(dense))  # measured far below the layers' sum
    assert cm.r1 >= 0
    narrow = {g: 2 for g in dense}
    assert cm.predict(narrow) < cm.predict(dense)


def test_remainder_slope_may_be_negative_but_keeps_costs_rising(tmp_path):
    """Layers timed alone can overestimate by an amount that grows with the activations (ONNX Runtime copies
    each layer's input and output): a negative activation slope is fitted, unless it would make a group
    cheaper as it widens."""
    model, x = tiny_cnn()
    a = analyze(model, x)
    curves = Profiler(get_target("analytic-test"), LatencyCache(tmp_path / "c.sqlite"), False).build(a)
    dense = {g.id: g.size for g in a.groups}
    half = {g: max(2, s // 2) for g, s in dense.items()}
    narrow = {g.id: g.candidates[0] for g in a.groups}

    def measured(cm, w, slope):
        return cm.layer_sum(w) + 1e-4 + slope * cm.phi(w)

    def fitted(slope):
        cm = CostModel(a, curves)
        for w in (dense, half):
            cm.add_measurement(w, measured(cm, w, slope))
        return cm

    slope = -0.05 * CostModel(a, curves).layer_sum(dense)
    gentle = fitted(slope)
    # Two points: the activation term, the weight term or the table's scale fits them exactly.
    assert min(gentle.r1, gentle.r2) < 0 or gentle.scale < 1
    for w in (dense, half):
        assert gentle.predict(w) == pytest.approx(measured(gentle, w, slope), rel=1e-6)
    assert gentle.predict(narrow) < gentle.predict(half) < gentle.predict(dense)
    steep = fitted(-5 * CostModel(a, curves).layer_sum(dense))  # would make wider plans faster
    assert steep.r1 >= 0 and steep.r2 >= 0 and steep.scale >= 1


def test_remainder_fits_a_table_off_by_a_factor(tmp_path):
    """Whole models running 0.7x the table's layer sum (e.g. ONNX Runtime fusing what was timed alone): the
    fitted scale is 0.7 and an unseen plan is predicted exactly."""
    model, x = tiny_cnn()
    a = analyze(model, x)
    curves = Profiler(get_target("analytic-test"), LatencyCache(tmp_path / "c.sqlite"), False).build(a)
    cm = CostModel(a, curves)
    plans = [{g.id: max(g.candidates[0], int(g.size * k)) for g in a.groups} for k in (1.0, 0.75, 0.5, 0.25)]
    for w in plans[:3]:
        cm.add_measurement(w, 0.7 * cm.layer_sum(w) + 2e-5)
    assert cm.scale == pytest.approx(0.7, rel=1e-6)
    assert cm.predict(plans[3]) == pytest.approx(0.7 * cm.layer_sum(plans[3]) + 2e-5, rel=1e-6)
    g = a.groups[0]
    assert np.all(np.diff(cm.group_costs(g.id, cm.dense_widths(), g.candidates)) > 0)  # the allocator sees it


def test_in_graph_times_rescale_each_layer_by_interpolated_ratio(tmp_path):
    """Profiled kernel times replace the table's per layer; between profiled plans the in-graph / table ratio
    is interpolated by table time, and a layer with no kernel found keeps its table curve."""
    from hwprune.hardware.ort import NodeTime

    model, x = tiny_cnn()
    a = analyze(model, x)
    curves = Profiler(get_target("analytic-test"), LatencyCache(tmp_path / "c.sqlite"), False).build(a)
    cm = CostModel(a, curves)
    conv = next(la for la in a.layers if la.kind.startswith("conv") and la.in_group and la.out_group)
    others = [la for la in a.layers if la is not conv]

    def node(la, widths, ratio):
        c_in, c_out = cm._widths_of(la, widths)
        shape = list(la.input_shape)
        shape[1] = c_in
        out = [shape[0], c_out, 1, 1]
        return NodeTime("Conv", tuple(shape), tuple(out), ratio * curves[la.name](c_in, c_out))

    dense = cm.dense_widths()
    half = {g: max(2, s // 2) for g, s in dense.items()}
    assert cm.add_in_graph(dense, [node(conv, dense, 0.5)]) == 1
    assert cm.add_in_graph(half, [node(conv, half, 1.5)]) == 1
    t_dense, t_half = (curves[conv.name](*cm._widths_of(conv, w)) for w in (dense, half))
    assert cm.curves[conv.name](*cm._widths_of(conv, dense)) == pytest.approx(0.5 * t_dense)
    assert cm.curves[conv.name](*cm._widths_of(conv, half)) == pytest.approx(1.5 * t_half)
    mid = (t_dense + t_half) / 2  # halfway in table time: halfway in ratio
    assert cm.in_graph(conv.name, mid) == pytest.approx(mid * 1.0)
    assert cm.in_graph(conv.name, 10 * t_dense) == pytest.approx(10 * t_dense * 0.5)  # constant beyond
    for la in others:  # no kernel matched them
        assert cm.in_graph(la.name, 1e-3) == 1e-3


def test_in_graph_match_accepts_block_padded_conv_channels(tmp_path):
    """ORT runs convs in a channel-blocked layout and profiles them with channels padded to the block (8 on
    AVX2, 16 on AVX-512); such a kernel still matches its layer, another channel count does not."""
    from hwprune.cost.model import _same_width
    from hwprune.hardware.ort import NodeTime

    assert _same_width(20, 24, conv=True) and _same_width(20, 32, conv=True) and _same_width(9, 16, conv=True)
    assert not _same_width(20, 21, conv=True) and not _same_width(20, 40, conv=True)
    assert not _same_width(20, 24, conv=False)  # Gemm / MatMul are not blocked

    model, x = tiny_cnn()
    a = analyze(model, x)
    curves = Profiler(get_target("analytic-test"), LatencyCache(tmp_path / "c.sqlite"), False).build(a)
    conv = next(la for la in a.layers if la.kind.startswith("conv") and la.out_group)  # the first one
    widths = {g.id: 3 for g in a.groups}  # 3 channels: padded to 8 in the graph
    c_in, c_out = CostModel(a, curves)._widths_of(conv, widths)
    shape = list(conv.input_shape)

    def padded(pad_in, pad_out):
        ins = [shape[0], pad_in, *shape[2:]]
        return NodeTime("Conv", tuple(ins), (shape[0], pad_out, 1, 1), 2.0 * curves[conv.name](c_in, c_out))

    cm = CostModel(a, curves)
    assert cm.add_in_graph(widths, [padded(-(-c_in // 8) * 8, 8)]) == 1
    assert cm.curves[conv.name](c_in, c_out) == pytest.approx(2.0 * curves[conv.name](c_in, c_out))
    assert CostModel(a, curves).add_in_graph(widths, [padded(-(-c_in // 8) * 8, 7)]) == 0


def test_calibration_plans_are_three_uniform_and_one_split():
    """The split plan keeps the earlier half of the groups at 0.3 and the later half at 0.85, so it moves the
    activations kept (mostly early) and the weights kept (mostly late) apart, which uniform plans cannot."""
    from hwprune.cost.model import CALIBRATION_KEEPS, SPLIT_KEEPS, calibration_plans, uniform_widths

    model, x = tiny_resnet()
    a = analyze(model, x)
    plans = calibration_plans(a)
    assert plans[:3] == [uniform_widths(a, k) for k in CALIBRATION_KEEPS] and len(plans) == 4
    early, late = (uniform_widths(a, k) for k in SPLIT_KEEPS)
    split = plans[3]
    first = [g.id for g in a.groups if split[g.id] == early[g.id] and early[g.id] != late[g.id]]
    last = [g.id for g in a.groups if split[g.id] == late[g.id] and early[g.id] != late[g.id]]
    assert first and last and len(first) + len(last) == sum(early[g.id] != late[g.id] for g in a.groups)
    order = {la.out_group: i for i, la in reversed(list(enumerate(a.layers)))}  # first writer of each group
    assert max(order[g] for g in first) < min(order[g] for g in last)
