"""Head pruning on torchvision vit_b_16 and block pruning on resnet50: measured CPU latency, dense vs pruned.

    python benchmarks/bench_structured.py                        # both, ratio 0.5, batch 1
    python benchmarks/bench_structured.py --only vit --threads 2 --out benchmarks/results/structured.md

Random weights (no downloads): the figures are latency and parameter counts, not accuracy. Latency is
`get_target("cpu").time_models(...)`: the MEASURING.md model protocol, the models interleaved in one
process, median and IQR, speedup = ratio of medians. For ViT a third model is timed as a control: every
attention converted to hwprune's HeadPrunedAttention with all heads kept, which separates the cost of the
conversion (torch's fused MHA kernel vs q/k/v Linears + scaled_dot_product_attention) from the heads removed.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch
import torchvision
from _common import table

from hwprune.apply.blocks import prune_blocks
from hwprune.apply.heads import convert_attention, prune_heads
from hwprune.hardware.targets import get_target


def _params(m: torch.nn.Module) -> float:
    return sum(p.numel() for p in m.parameters()) / 1e6


def _row(name: str, t, base, m) -> list:
    return [
        name,
        f"{t.median * 1e3:.1f}",
        f"{t.iqr * 1e3:.1f}",
        t.n,
        f"{base.median / t.median:.2f}x",
        f"{_params(m):.2f}",
    ]


HEADERS = ["model", "median ms", "IQR ms", "calls", "speedup vs dense", "params (M)"]


def bench_vit(target, ratio: float, criterion: str) -> tuple[str, dict]:
    dense = torchvision.models.vit_b_16(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    t0 = time.perf_counter()
    pruned, info = prune_heads(dense, x, criterion, ratio)
    prune_s = time.perf_counter() - t0
    control = convert_attention(dense)
    # torchvision zero-initialises the classifier, so compare the encoder's output (the token features).
    feats = []
    hooks = [m.encoder.register_forward_hook(lambda mod, args, out: feats.append(out)) for m in (control, dense)]
    with torch.inference_mode():
        control(x), dense(x)
    for h in hooks:
        h.remove()
    err = (feats[0] - feats[1]).abs().max()
    td, tc, tp_ = target.time_models([dense, control, pruned], x)
    rows = [
        _row("vit_b_16 dense (nn.MultiheadAttention)", td, td, dense),
        _row("vit_b_16 HeadPrunedAttention, all 12 heads (control)", tc, td, control),
        _row(f"vit_b_16 {info.heads_after}/{info.heads_before} heads ({criterion}, per layer)", tp_, td, pruned),
    ]
    text = (
        f"### Heads: vit_b_16, ratio {ratio}, criterion {criterion}, batch 1x3x224x224\n\n{table(HEADERS, rows)}\n\n"
        f"Pruning took {prune_s:.1f} s. Control vs dense: max |encoder output difference| {err.item():.2e} "
        "(fp32 rounding). "
        f"Speedup of pruned vs control: {tc.median / tp_.median:.2f}x.\n"
    )
    return text, {"dense": td.to_dict(), "control": tc.to_dict(), "pruned": tp_.to_dict(), "info": info.to_dict()}


def bench_resnet(target, ratio: float, criterion: str) -> tuple[str, dict]:
    dense = torchvision.models.resnet50(weights=None).eval()
    x = torch.randn(1, 3, 224, 224)
    t0 = time.perf_counter()
    pruned, info = prune_blocks(dense, x, criterion, ratio)
    prune_s = time.perf_counter() - t0
    td, tp_ = target.time_models([dense, pruned], x)
    rows = [
        _row("resnet50 dense", td, td, dense),
        _row(f"resnet50 minus {len(info.removed)}/{info.removable} blocks ({criterion})", tp_, td, pruned),
    ]
    text = (
        f"### Blocks: resnet50, ratio {ratio} of removable blocks, criterion {criterion}, batch 1x3x224x224\n\n"
        f"{table(HEADERS, rows)}\n\nRemoved: {', '.join(info.removed)} (of {info.removable} removable; the 4 "
        f"downsampling blocks are never candidates). Pruning took {prune_s:.1f} s.\n"
    )
    return text, {"dense": td.to_dict(), "pruned": tp_.to_dict(), "info": info.to_dict()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["vit", "resnet"], default=None)
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--head-criterion", default="l1")
    ap.add_argument("--block-criterion", default="loss-change")
    ap.add_argument("--threads", type=int, default=None, help="intra-op threads (default: physical cores)")
    ap.add_argument("--out", default=None, help="also write the markdown here")
    a = ap.parse_args()
    torch.manual_seed(0)
    target = get_target("cpu", threads=a.threads)
    fp = target.fingerprint()
    parts = [
        "# Structured granularities: attention heads and residual blocks (measured, CPU)\n",
        f"Command: `python benchmarks/bench_structured.py{' --only ' + a.only if a.only else ''}"
        f"{f' --threads {a.threads}' if a.threads else ''}`  \n"
        f"Fingerprint: {fp.get('cpu')}, {fp.get('physical_cores')} physical / {fp.get('logical_cores')} logical "
        f"cores, {fp.get('threads')} threads, torch {fp.get('torch')}, {fp.get('dtype')}, python "
        f"{platform.python_version()}. Random weights. Latency: MODEL protocol (>= 20 calls and >= 0.5 s per "
        "model after warm-up), models interleaved, median and IQR. The machine is shared with other jobs, so "
        "absolute times drift; the interleaved ratio is the figure to read.\n",
    ]
    if a.only in (None, "vit"):
        text, _ = bench_vit(target, a.ratio, a.head_criterion)
        print(text, flush=True)
        parts.append(text)
    if a.only in (None, "resnet"):
        text, _ = bench_resnet(target, a.ratio, a.block_criterion)
        print(text, flush=True)
        parts.append(text)
    if a.out:
        with open(a.out, "w") as f:
            f.write("\n".join(parts))


if __name__ == "__main__":
    main()
