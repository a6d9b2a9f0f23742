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
import time
from pathlib import Path

import torch
from _common import save, table

from hwprune.apply.channels import apply_plan
from hwprune.finetune.trainer import TrainConfig, fit
from hwprune.hardware.targets import get_target
from hwprune.hardware.timing import ratio_estimate
from hwprune.plan.plan import Plan
from hwprune.zoo import text
from hwprune.zoo.specs import load_saved, resolve
from hwprune.zoo.userdata import resolve_data

#: The encoder layers whose outputs `--kd-feature-weight` distils.
LAYERS = tuple(f"encoder.encoder.layer.{i}" for i in range(6))


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
    ap.add_argument("--ablate", type=int, default=None, metavar="STEPS", help="distil the plan this many steps")
    ap.add_argument("--kd-feature-weight", type=float, default=0.0, help="--ablate: weight of the layer MSE")
    a = ap.parse_args()
    if a.ablate is not None:
        ablate(Path(a.run), a.batch_size, a.seq_len, a.ablate, a.kd_feature_weight)
        return
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


def fidelity(model, batches, e_dense) -> tuple[float, float]:
    e = embed(model, batches)
    return float(torch.nn.functional.cosine_similarity(e, e_dense).mean()), nn_agreement(e_dense, e)


def ablate(run: Path, batch: int, seq: int, steps: int, feature_weight: float) -> None:
    ref = resolve("example:minilm", batch, seq_len=seq)
    dense, example = ref.model, ref.example_inputs
    data = resolve_data("python-docs", example, ref.tokenizer, dense)
    model = apply_plan(dense, example, Plan.load(run / "plan.json"))
    _, held_out = text.split(text.python_docs())
    batches = text.encode(ref.tokenizer, held_out, batch, seq)
    e_dense = embed(dense, batches)
    cos, agree = fidelity(model, batches, e_dense)
    print(f"one-shot: mean cosine {cos:.4f}, same nearest neighbour {100 * agree:.1f}%")
    for p in model.encoder.embeddings.parameters():
        p.requires_grad_(False)
    feats = LAYERS if feature_weight else ()
    cfg = TrainConfig(steps=steps, lr=3e-4, kd_features=feats, kd_feature_weight=feature_weight or 1.0)
    t0 = time.perf_counter()
    fit(model, data, cfg, teacher=dense, loss_fn=text.cosine_loss, progress=False)
    cos, agree = fidelity(model, batches, e_dense)
    what = f"cosine + {feature_weight:g} x layer MSE" if feature_weight else "cosine"
    took = time.perf_counter() - t0
    print(f"{steps} steps ({what}, {took:.0f} s): mean cosine {cos:.4f}, same nearest neighbour {100 * agree:.1f}%")


if __name__ == "__main__":
    main()
