"""Helpers shared by tests of several stages."""

import contextlib

import numpy as np
import torch
import torch.nn as nn

from hwprune.apply.channels import apply_plan
from hwprune.cli.main import main
from hwprune.cost.curves import LayerCurve
from hwprune.cost.model import CostModel
from hwprune.groups.analysis import analyze
from hwprune.importance import compute_scores
from hwprune.plan.allocate import Problem
from hwprune.plan.plan import make_plan


def uniformly_pruned(model_fn, frac=0.5):
    """(dense model, example input, plan, pruned model) with every group cut to `frac` of its width by l1."""
    model, x = model_fn()
    a = analyze(model, x)
    scores = compute_scores(model, a, "l1")
    widths = {g.id: max(1, int(g.size * frac)) for g in a.groups}
    sizes = {g.id: g.size for g in a.groups}
    plan = make_plan(widths, scores, sizes, a.multiples, units=a.units, allocator="uniform", criterion="l1")
    return model, x, plan, apply_plan(model, x, plan)


def magnitude(model: nn.Module) -> dict[str, torch.Tensor]:
    """|w| of every Linear and Conv2d weight, by module name: the simplest per-weight score."""
    return {n: m.weight.detach().abs() for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def mlp3():
    """A seeded 12 -> 24 -> 3 MLP: the smallest classifier a pipeline run prunes and fine-tunes."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 3))


def mlp3_batches():
    """Six seeded (16 x 12 inputs, 3-class labels) batches for `mlp3`."""
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(16, 12, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(6)]


@contextlib.contextmanager
def one_thread():
    """Tiny models run fastest on one thread; with two, on a loaded 2-core machine each op waits for a core."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def run_cli(capsys, *argv):
    """`hwprune ARGV...` in-process: (exit code, stdout, stderr) of this call only.

    Output captured earlier in the test (a fixture's own `main` run, its timing warnings) is dropped first.
    """
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, needle):
    """Bad input: exit code 2, one line on stderr that starts `hwprune: error:` and names the fix, no traceback."""
    assert code == 2
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("hwprune: error:") and needle in lines[0], err
    assert "Traceback" not in err


def toy_spec(**over) -> dict:
    """A hand-checkable spec: 1e12 MAC/s peak, 1e11 B/s, both at 50% efficiency, 1 us per op, 8x8 tiles."""
    d = {
        "name": "toy",
        "description": "test spec",
        "default_dtype": "fp32",
        "memory_bandwidth": 1.0e11,
        "memory_capacity": 1.0e9,
        "onchip_buffer": 1048576,
        "op_overhead": 1.0e-6,
        "efficiency": {"compute": 0.5, "bandwidth": 0.5},
        "energy_per_dram_byte": 1.0e-10,
        "dtypes": {"fp32": {"peak_ops": 2.0e12, "tile_in": 8, "tile_out": 8, "energy_per_mac": 1.0e-12}},
        "sparsity": {"2:4": 0.5},
    }
    d.update(over)
    return d


def synthetic_problem(model_fn, seed=0, scale=None):
    """A cost model whose 'measured' curves are bilinear in the widths: latency = in * out * 1e-6 (times
    `scale[layer name]` where given)."""
    model, x = model_fn()
    analysis = analyze(model, x)
    curves = {}
    for la in analysis.layers:
        ins = sorted({1, la.in_channels})
        outs = sorted({1, la.out_channels})
        k = (scale or {}).get(la.name, 1.0)
        grid = np.array([[k * i * o * 1e-6 for o in outs] for i in ins])
        curves[la.name] = LayerCurve(ins, outs, grid, depthwise=la.depthwise)
    cost = CostModel(analysis, curves)
    rng = np.random.default_rng(seed)
    scores = {g.id: rng.random(g.size) + 0.1 for g in analysis.groups}
    return Problem(cost, {g.id: g.candidates for g in analysis.groups}, scores)


def tiny_llama(
    kv_heads: int = 2,
    *,
    hidden: int = 64,
    layers: int = 2,
    head_dim: int = 16,
    ffn: int = 96,
    vocab: int = 100,
    use_cache: bool = False,
    seed: int = 0,
):
    """A Llama with grouped-query attention (4 query heads of `head_dim`, `kv_heads` KV heads), seeded."""
    import transformers  # noqa: PLC0415  (tests that use it importorskip transformers first)

    cfg = transformers.LlamaConfig(
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=kv_heads,
        intermediate_size=ffn,
        vocab_size=vocab,
        head_dim=head_dim,
        use_cache=use_cache,
    )
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()
