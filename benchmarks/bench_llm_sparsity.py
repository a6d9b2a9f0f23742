"""Magnitude, Wanda and SparseGPT on example:tinylm: held-out perplexity at 50% unstructured and 2:4.

    python benchmarks/bench_llm_sparsity.py --md benchmarks/results/llm-sparsity.md [--json out.json]

The dense model is `example:tinylm` (trained and cached on first use). Every method masks the Linear layers
of the 4 decoder layers (the embedding and the output layer stay dense), block by block on calibration
text: 128 windows of 256 bytes of the training text (the papers use 128 segments), drawn with seeds 0, 1, 2
(three calibration draws; magnitude needs none). Perplexity per byte on the held-out text, sliding window
of 256 bytes advanced by 128. The figures are the mean over the draws and their spread (half the range).

Two diagnostic rows follow the papers' defaults: Wanda compared per layer instead of per output row, and
magnitude compared per row, to separate Wanda's score from its comparison group; and the input features'
norm spread per layer kind (max / median of ||X_j||), the outliers Wanda's score is built to protect.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
import torch.nn as nn
from _common import save, table

from hwprune.apply.sequential import SequentialConfig, find_blocks, prune_sequential
from hwprune.evaluate.perplexity import perplexity
from hwprune.zoo import tinylm
from hwprune.zoo.examples import trained_example

SEEDS = (0, 1, 2)
CAL_WINDOWS, CAL_BATCH, CONTEXT, STRIDE = 128, 16, 256, 128
PATTERNS = {"50% unstructured": ("unstructured", 0.5), "2:4": ("2:4", None)}
#: (row label, method, Wanda's comparison group, needs calibration)
ROWS = [
    ("magnitude (per layer)", "magnitude", "row", False),
    ("Wanda (per output row, the paper's)", "wanda", "row", True),
    ("SparseGPT", "sparsegpt", "row", True),
    ("Wanda compared per layer", "wanda", "layer", True),
]


def calibration(seed: int) -> list[dict]:
    train, _ = tinylm.corpus()
    w = tinylm.windows(train, CONTEXT, CAL_WINDOWS, seed=1000 + seed)  # not the training run's own draws
    return [{"input_ids": b} for b in w.split(CAL_BATCH)]


def magnitude_per_row(model: nn.Module, sparsity: float) -> None:
    """Magnitude compared per output row (diagnostic: Wanda's group with magnitude's score)."""
    from hwprune.apply.masks import apply_masks  # noqa: PLC0415

    prefix, blocks = find_blocks(model)
    masks = {}
    for i, b in enumerate(blocks):
        for n, m in b.named_modules():
            if isinstance(m, nn.Linear):
                s = m.weight.detach().abs()
                k = round(sparsity * s.shape[1])
                keep = torch.ones_like(s, dtype=torch.bool).scatter_(1, s.topk(k, 1, largest=False).indices, False)
                masks[f"{prefix}.{i}.{n}"] = keep
    apply_masks(model, masks)


def input_norm_spread(model: nn.Module, batches: list[dict]) -> dict[str, float]:
    """Layer kind (q_proj, ..., down_proj) -> median over the blocks of max_j ||X_j|| / median_j ||X_j||."""
    sq: dict[str, torch.Tensor] = {}

    def hook(name):
        def f(mod, args, out):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).double()
            sq[name] = sq.get(name, 0) + (x * x).sum(0)

        return f

    _, blocks = find_blocks(model)
    handles = [
        m.register_forward_hook(hook(f"{i}.{n}"))
        for i, b in enumerate(blocks)
        for n, m in b.named_modules()
        if isinstance(m, nn.Linear)
    ]
    with torch.no_grad():
        for b in batches:
            model(**b)
    for h in handles:
        h.remove()
    by_kind: dict[str, list[float]] = {}
    for name, s in sq.items():
        norm = s.sqrt()
        by_kind.setdefault(name.rsplit(".", 1)[-1], []).append(float(norm.max() / norm.median()))
    return {k: statistics.median(v) for k, v in by_kind.items()}


def fmt(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--md", help="write the markdown result here")
    ap.add_argument("--json", help="write every figure here")
    args = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    dense = trained_example("tinylm", progress=False).eval()
    _, held = tinylm.corpus()
    ppl = lambda m: perplexity(m, held, CONTEXT, STRIDE).perplexity  # noqa: E731
    dense_ppl = ppl(dense)
    print(f"dense {dense_ppl:.3f} ({len(held)} held-out bytes)")
    figures: dict[str, dict[str, list[float]]] = {}
    for label, method, group, calibrated in ROWS:
        for col, (pattern, sparsity) in PATTERNS.items():
            vals = []
            for seed in SEEDS if calibrated else SEEDS[:1]:
                m = copy.deepcopy(dense)
                cfg = SequentialConfig(method=method, pattern=pattern, sparsity=sparsity, group=group)
                prune_sequential(m, calibration(seed), cfg)
                vals.append(ppl(m))
                print(f"{label:40s} {col:18s} seed {seed}: {vals[-1]:.3f}", flush=True)
            figures.setdefault(label, {})[col] = vals
    m = copy.deepcopy(dense)
    magnitude_per_row(m, 0.5)
    figures["magnitude compared per row"] = {"50% unstructured": [ppl(m)]}
    spread = input_norm_spread(dense, calibration(0))

    rows = [["dense", f"{dense_ppl:.3f}", f"{dense_ppl:.3f}"]]
    rows += [[label, *(fmt(v[c]) if c in v else "" for c in PATTERNS)] for label, v in figures.items()]
    md = [
        "# Weight sparsity on a language model: magnitude, Wanda, SparseGPT (example:tinylm)",
        "",
        f"Command: `python benchmarks/bench_llm_sparsity.py --md benchmarks/results/llm-sparsity.md` "
        f"({time.perf_counter() - t0:.0f} s on 2 cores).",
        "",
        f"Model: example:tinylm, byte-level Llama, {sum(p.numel() for p in dense.parameters()) / 1e6:.2f} M "
        "parameters (4 decoder layers of 128, GQA 4 query / 2 KV heads, SwiGLU 384), trained here on the "
        "python-docs corpus. The 28 Linear layers of the decoder layers are masked; embedding and output layer "
        f"dense. Calibration: {CAL_WINDOWS} windows of {CONTEXT} training bytes, draws with seeds "
        f"{', '.join(map(str, SEEDS))}. Perplexity per byte on {len(held)} held-out bytes, sliding window "
        f"{CONTEXT} / stride {STRIDE}. Figures: mean over the draws ± half their range (magnitude and the "
        "per-row magnitude row need no calibration: one figure).",
        "",
        table(["method", *PATTERNS], rows),
        "",
        "Input-feature norm spread (max_j / median_j of ||X_j|| over the calibration tokens, median over the 4 "
        "layers), the dense model:",
        "",
        table(["layer", "max / median"], [[k, f"{v:.1f}"] for k, v in spread.items()]),
        "",
    ]
    text = "\n".join(md)
    print(text)
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)
    save(args.json, {"dense": dense_ppl, "figures": figures, "input_norm_spread": spread, "held_out_bytes": len(held)})


if __name__ == "__main__":
    main()
