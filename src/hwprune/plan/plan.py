"""Stage 4 output: a Plan is plain data (a width and the kept channels per group), stored as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hwprune.core.errors import HwpruneError


@dataclass
class GroupPlan:
    id: str
    size: int
    width: int
    keep: list[int]  # kept channel indices of the group's root layer, ascending

    def __post_init__(self):
        if not 1 <= self.width <= self.size or len(self.keep) != self.width:
            raise ValueError(f"group {self.id}: width {self.width} must be 1..{self.size} and match len(keep)")


@dataclass
class Plan:
    groups: list[GroupPlan]
    allocator: str = ""
    criterion: str = ""
    budget: str = ""
    predicted_latency_s: float | None = None
    meta: dict = field(default_factory=dict)

    def widths(self) -> dict[str, int]:
        return {g.id: g.width for g in self.groups}

    def to_dict(self) -> dict:
        return {"format": "hwprune-plan/1", **asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> Plan:
        if d.get("format") != "hwprune-plan/1":
            raise HwpruneError('not an hwprune plan (expected "format": "hwprune-plan/1")')
        d = {k: v for k, v in d.items() if k != "format"}
        d["groups"] = [GroupPlan(**g) for g in d["groups"]]
        return cls(**d)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError, KeyError) as e:
            raise HwpruneError(f"cannot read plan {path}: {e}") from e


def make_plan(widths: dict[str, int], scores: dict[str, object], sizes: dict[str, int], **info) -> Plan:
    """Keep the `width` highest-scoring channels of each group."""
    groups = []
    for gid, size in sizes.items():
        w = int(widths.get(gid, size))
        order = np.argsort(-np.asarray(scores[gid]), kind="stable")[:w]
        groups.append(GroupPlan(gid, size, w, sorted(int(i) for i in order)))
    return Plan(groups, **info)
