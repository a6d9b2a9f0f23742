"""all-MiniLM-L6-v2 pruned on the python-docs corpus: do its sentence embeddings survive, one-shot and distilled?

    hwprune prune --model example:minilm --data python-docs --batch-size 8 --seq-len 128 \
        --budget latency=0.6 --finetune-epochs 3 --lr 5e-5 --out runs/minilm
    python benchmarks/bench_minilm.py --run runs/minilm [--json out.json]

On the held-out sentences (the corpus split `hwprune.zoo.text.split`, never trained on) it compares three
encoders: dense, one-shot (the run's plan applied to the dense model, no fine-tuning) and the run's saved
model (distilled). Figures: the mean cosine similarity between each pruned embedding and the dense one, and
the share of held-out sentences whose nearest neighbour (cosine, among the other held-out sentences) is the
same under the pruned encoder as under the dense one. Then the distilled model is timed against the dense
one, interleaved (`cpu` target, the run's batch and sequence length), with a 95% interval.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from _common import save, table

from hwprune.apply.channels import apply_plan
from hwprune.hardware.targets import get_target
from hwprune.hardware.timing import ratio_estimate
from hwprune.plan.plan import Plan
from hwprune.zoo import text
from hwprune.zoo.specs import load_saved, resolve


def embed(model, batches) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(**b) for b in batches])


def nn_agreement(dense: torch.Tensor, pruned: torch.Tensor) -> float:
    """Share of rows whose nearest other row (cosine) is the same under both embeddings."""

    def nearest(e):
        sim = e @ e.T
        sim.fill_diagonal_(-2.0)
        return sim.argmax(1)

    return float((nearest(dense) == nearest(pruned)).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", required=True, help="the output directory of the hwprune prune run")
    ap.add_argument("--batch-size", type=int, default=8, help="as the run was pruned at")
    ap.add_argument("--seq-len", type=int, default=128, help="as the run was pruned at")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    run = Path(a.run)
    batch, seq = a.batch_size, a.seq_len
    ref = resolve("example:minilm", batch, seq_len=seq)
    dense, example = ref.model, ref.example_inputs
    oneshot = apply_plan(dense, example, Plan.load(run / "plan.json"))
    tuned = load_saved(run / "model")
    _, held_out = text.split(text.python_docs())
    batches = text.encode(ref.tokenizer, held_out, batch, seq)
    e_dense = embed(dense, batches)
    rows, payload = [], {"held_out": len(held_out), "batch": batch, "seq_len": seq}
    for name, model in (("one-shot", oneshot), ("distilled", tuned)):
        e = embed(model, batches)
        cos = float(torch.nn.functional.cosine_similarity(e, e_dense).mean())
        agree = nn_agreement(e_dense, e)
        payload[name] = {"mean_cosine": cos, "nn_agreement": agree}
        rows.append([name, f"{cos:.4f}", f"{100 * agree:.1f}%"])
    target = get_target("cpu")
    timings = target.time_models([dense, tuned], example, final=True)
    r = ratio_estimate(timings[1], timings[0])
    payload["latency_ratio"] = {"median": r.value, "low": r.low, "high": r.high}
    print(f"{len(held_out)} held-out sentences, batch {batch} x seq {seq}")
    print(table(["model", "mean cosine to dense", "same nearest neighbour"], rows))
    print(f"re-measured latency, distilled / dense: {r.value:.3f} [{r.low:.3f}, {r.high:.3f}] (95%)")
    save(a.json, payload)


if __name__ == "__main__":
    main()
