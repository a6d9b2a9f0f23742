from tiny_models import tiny_cnn, tiny_resnet

from hwprune.groups.analysis import analyze, candidate_widths


def test_groups_of_a_plain_cnn_and_output_layer_is_kept():
    model, x = tiny_cnn()
    a = analyze(model, x)
    assert a.output_layer == "fc"
    assert {g.id: g.size for g in a.groups} == {"conv1": 16, "conv2": 24}
    layers = {la.name: la for la in a.layers}
    assert (layers["conv1"].in_group, layers["conv1"].out_group) == (None, "conv1")
    assert (layers["conv2"].in_group, layers["conv2"].out_group) == ("conv1", "conv2")
    assert (layers["fc"].in_group, layers["fc"].out_group) == ("conv2", None)


def test_residual_add_couples_stem_and_block_output():
    model, x = tiny_resnet()
    a = analyze(model, x)
    sizes = {g.id: g.size for g in a.groups}
    assert len(a.groups) == 2 and sorted(sizes.values()) == [8, 16]
    residual = next(g for g in a.groups if g.size == 16)
    outs = {name for name, side in residual.members if side == "out"}
    assert {"stem", "b"} <= outs


def test_candidate_widths():
    assert candidate_widths(16, 0.1) == list(range(2, 17))
    c = candidate_widths(256, 0.1)
    assert c[0] == 26 and c[-1] == 256 and all(w % 8 == 0 for w in c[1:])
    assert len(candidate_widths(4096)) <= 66
