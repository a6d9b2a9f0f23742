"""Stage 4 output: a Plan is plain data (a width and the kept channels per group), stored as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from hwprune.core.errors import HwpruneError


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass
class GroupPlan:
    id: str
    size: int
    width: int
    keep: list[int]  # kept channel indices of the group's root layer, ascending

    def __post_init__(self):
        ints = (self.size, self.width, *self.keep) if isinstance(self.keep, list) else None
        if not isinstance(self.id, str) or ints is None or not all(_is_int(v) for v in ints):
            raise HwpruneError(f"plan group {self.id!r}: id must be a string, size and width integers, keep a list")
        if not 1 <= self.width <= self.size or len(self.keep) != self.width:
            raise HwpruneError(f"plan group {self.id}: width {self.width} must be 1..{self.size} and match len(keep)")
        if len(set(self.keep)) != self.width or not all(0 <= i < self.size for i in self.keep):
            last = self.size - 1
            raise HwpruneError(f"plan group {self.id}: keep must be {self.width} distinct indices in 0..{last}")


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
        if not isinstance(d, dict) or d.get("format") != "hwprune-plan/1":
            raise HwpruneError('not an hwprune plan (expected "format": "hwprune-plan/1")')
        d = {k: v for k, v in d.items() if k != "format"}
        groups = d.get("groups")
        if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
            raise HwpruneError("plan 'groups' must be a list of objects (id, size, width, keep)")
        try:
            d["groups"] = [GroupPlan(**g) for g in groups]
            return cls(**d)
        except TypeError as e:  # a missing or unknown key, of a group or of the plan
            raise HwpruneError(f"plan has the wrong keys: {e}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> Plan:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except HwpruneError as e:
            raise HwpruneError(f"cannot read plan {path}: {e}") from None
        except (OSError, json.JSONDecodeError, TypeError, KeyError) as e:  # unreadable, cut short, unknown keys
            raise HwpruneError(f"cannot read plan {path}: {e}") from e


def make_plan(
    widths: dict[str, int],
    scores: dict[str, object],
    sizes: dict[str, int],
    multiples: dict[str, int] | None = None,
    units: dict[str, int] | None = None,
    **info,
) -> Plan:
    """Keep the `width` highest-scoring channels of each group.

    A group read or written by a grouped conv (`multiples[gid]` = g > 1) keeps the same channels in each of
    its g conv groups, the positions whose scores summed over the conv groups are highest, and a width
    rounded down to a multiple of g: torch-pruning slices a grouped conv's input that way. A group of
    contiguous blocks (`units[gid]` = u > 1: attention heads) keeps the whole blocks whose summed scores are
    highest, and a width rounded down to a multiple of u.
    """
    groups = []
    for gid, size in sizes.items():
        w = int(widths.get(gid, size))
        s = np.asarray(scores[gid], dtype=np.float64)
        m = (multiples or {}).get(gid, 1)
        u = (units or {}).get(gid, 1)
        if u > 1:
            w = max(u, w // u * u)
            best = np.argsort(-s.reshape(size // u, u).sum(axis=1), kind="stable")[: w // u]
            keep = sorted(int(b * u + r) for b in best for r in range(u))
        elif m > 1:
            per = size // m
            w = max(m, w // m * m)
            best = np.argsort(-s.reshape(m, per).sum(axis=0), kind="stable")[: w // m]
            keep = sorted(int(j * per + r) for j in range(m) for r in best)
        else:
            keep = sorted(int(i) for i in np.argsort(-s, kind="stable")[:w])
        groups.append(GroupPlan(gid, size, w, keep))
    return Plan(groups, **info)
