"""What a fine-tuning checkpoint directory keeps of the run around it, so that `--resume DIR` prunes nothing
again: the run's config (`run.json`, written before pruning starts) and, once pruning is done, the pruned
model with the plan and the report sections pruning produced (`stage/`). The trainer's own checkpoints
(`step-*/`, `latest`) sit next to them. Everything is JSON and safetensors, written atomically.

The same packing carries the pruned model from rank 0 to the other processes under torchrun.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import tempfile
from pathlib import Path

import torch.nn as nn

from hwprune.core.errors import HwpruneError
from hwprune.core.files import atomic_directory, write_file_atomic
from hwprune.export.model import load, object_source, write_model
from hwprune.finetune import checkpoint as ckpt
from hwprune.pipeline.config import PruneConfig
from hwprune.pipeline.context import Outcome, Run
from hwprune.pipeline.methods import MethodRecord
from hwprune.plan.plan import Plan
from hwprune.report.schema import GroupWidth, LoopStep, TableBuild, from_dict

RUN_JSON, STAGE, STAGE_JSON = "run.json", "stage", "stage.json"
FORMAT = "hwprune-run/1"
#: Settings a resumed run may change: where checkpoints go and how often, and the training device.
_MAY_CHANGE = {("finetune", "checkpoint_dir"), ("finetune", "checkpoint_every"), ("finetune", "device")}


def start(directory: str | Path, cfg: PruneConfig) -> None:
    """Record the run's config in a fresh checkpoint directory (before pruning: a run killed while pruning
    resumes by pruning again, with the same settings)."""
    data = json.dumps({"format": FORMAT, "config": cfg.to_dict()}, indent=1).encode()
    write_file_atomic(Path(directory) / RUN_JSON, data)


def check(directory: str | Path, cfg: PruneConfig) -> None:
    """`--resume DIR` before any work: DIR holds a run of the same settings and an intact checkpoint."""
    d = Path(directory)
    if not d.is_dir():
        raise HwpruneError(f"--resume {d}: no such directory (a run's checkpoints: OUT.ckpt or --checkpoint-dir)")
    try:
        saved = json.loads((d / RUN_JSON).read_text())
    except OSError:
        raise HwpruneError(f"--resume {d}: no {RUN_JSON} there; is it a fine-tuning checkpoint directory?") from None
    except ValueError:
        raise HwpruneError(f"--resume {d}: {RUN_JSON} is damaged; start the run again") from None
    if not isinstance(saved, dict) or saved.get("format") != FORMAT or not isinstance(saved.get("config"), dict):
        raise HwpruneError(f"--resume {d}: {RUN_JSON} is not an hwprune run record")
    _same(saved["config"], cfg.to_dict(), d)
    ckpt.load(d)  # a damaged trainer checkpoint is refused now, not after the model is read
    if (d / STAGE).exists():
        _read_stage_json(d)


def _same(saved: dict, now: dict, where: Path) -> None:
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key), now.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                if (key, k) not in _MAY_CHANGE and a.get(k) != b.get(k):
                    raise HwpruneError(
                        f"--resume {where}: the run was started with {key}.{k}={a.get(k)!r}, this one has "
                        f"{b.get(k)!r}; resume with the same settings"
                    )
        elif a != b:
            raise HwpruneError(
                f"--resume {where}: the run was started with {key}={a!r}, this one has {b!r}; resume with the same "
                "settings"
            )


def _plain(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def save_stage(directory: str | Path, kind: str, out: Outcome, run: Run) -> None:
    """The pruned model (before fine-tuning), its plan and report sections, atomically."""
    record = {
        "kind": kind,
        "plan": out.plan.to_dict(),
        "score_oneshot": out.score_oneshot,
        "finetuned": out.finetuned,
        "sections": _plain(out.sections),
        "stages": dict(run.stages),
        "dense_medians": list(run.dense_medians),
    }

    with atomic_directory(Path(directory) / STAGE, fsync=True) as tmp:
        (tmp / "model").mkdir()
        write_model(out.model, tmp / "model", object_source(out.model))
        (tmp / STAGE_JSON).write_text(json.dumps(record))


def _read_stage_json(directory: Path) -> dict:
    try:
        return json.loads((directory / STAGE / STAGE_JSON).read_text())
    except (OSError, ValueError) as e:
        raise HwpruneError(
            f"--resume {directory}: the pruned stage is damaged ({type(e).__name__}); start again"
        ) from None


def load_stage(directory: str | Path, run: Run) -> tuple[str, Outcome] | None:
    """(method kind, Outcome) as pruning left them; None when the run was killed before pruning ended."""
    d = Path(directory)
    if not (d / STAGE).exists():
        return None
    record = _read_stage_json(d)
    model = load(d / STAGE / "model", model=copy.deepcopy(run.dense))
    plan_d = record["plan"]
    if record["kind"] == "budget":
        plan = Plan.from_dict(plan_d)
    else:
        plan = MethodRecord(**{k: v for k, v in plan_d.items() if k != "format"})
    sections = dict(record["sections"])
    if sections.get("latency_table") is not None:
        sections["latency_table"] = from_dict(TableBuild, sections["latency_table"])
    sections["loop"] = [from_dict(LoopStep, s) for s in sections.get("loop", [])]
    sections["groups"] = [from_dict(GroupWidth, g) for g in sections.get("groups", [])]
    run.stages.update(record.get("stages", {}))
    run.dense_medians[:0] = record.get("dense_medians", [])
    out = Outcome(model, plan, record.get("score_oneshot"), record.get("finetuned", False), sections)
    return record["kind"], out


def pack_model(model: nn.Module) -> bytes:
    """The pruned model as bytes (spec JSON + safetensors, no pickle): a header line, then the files."""
    with tempfile.TemporaryDirectory() as tmp:
        write_model(model, Path(tmp), object_source(model))
        files = {p.name: p.read_bytes() for p in sorted(Path(tmp).iterdir()) if p.is_file()}
    header = json.dumps({name: len(b) for name, b in files.items()}).encode()
    return header + b"\n" + b"".join(files.values())


def unpack_model(blob: bytes, dense: nn.Module) -> nn.Module:
    """`pack_model`'s model rebuilt from a copy of `dense` (narrowed, then loaded strictly)."""
    header, _, rest = blob.partition(b"\n")
    sizes = json.loads(header)
    with tempfile.TemporaryDirectory() as tmp:
        at = 0
        for name, n in sizes.items():
            (Path(tmp) / name).write_bytes(rest[at : at + n])
            at += n
        return load(tmp, model=copy.deepcopy(dense))
