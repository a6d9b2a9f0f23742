"""`--budget` parsing: what the pruned model must fit, per resource.

One or more comma-separated `KIND=VALUE` terms, each KIND at most once, all enforced together:

- `latency=0.5` (fraction of the dense latency measured on the target) or `latency=12ms` (`s`, `ms`, `us`);
- `memory=8MB`: weights + peak activations, bytes (`B`, `KB`, `MB`, `GB` are powers of 1000, `KiB`, `MiB`,
  `GiB` powers of 1024), or a fraction of the dense model's;
- `energy=2mJ`: energy per inference from the target's energy model (`J`, `mJ`, `uJ`), or a fraction;
- `params=1.5M`, `macs=300M`: counts (`K`, `M`, `G` suffixes), or a fraction.

A bare number (`0.5`) is a latency fraction of dense.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hwprune.core.errors import HwpruneError

#: Per kind: its unit suffixes (lower-cased) -> multiplier to the base unit, and the base unit's name.
UNITS: dict[str, tuple[dict[str, float], str]] = {
    "latency": ({"s": 1.0, "ms": 1e-3, "us": 1e-6}, "s"),
    "memory": (
        {"b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024.0, "mib": 1024.0**2, "gib": 1024.0**3},
        "bytes",
    ),
    "energy": ({"j": 1.0, "mj": 1e-3, "uj": 1e-6}, "J"),
    "params": ({"k": 1e3, "m": 1e6, "g": 1e9}, ""),
    "macs": ({"k": 1e3, "m": 1e6, "g": 1e9}, ""),
}
EXAMPLES = "latency=0.5, latency=12ms, memory=8MB, energy=2mJ, params=1.5M, macs=300M"
_NUMBER = re.compile(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*([a-z]*)\s*", re.I)


@dataclass(frozen=True)
class Budget:
    kind: str  # latency | memory | energy | params | macs
    relative: bool
    value: float  # fraction of the dense model's figure, or an absolute amount in the kind's base unit
    text: str

    def limit(self, dense: float) -> float:
        """The absolute limit, given the dense model's figure of the same kind."""
        return self.value * dense if self.relative else self.value

    def describe(self) -> str:
        if self.relative:
            return f"{self.value:g} x dense {self.kind}"
        return format_amount(self.kind, self.value)


def format_amount(kind: str, value: float) -> str:
    """A figure of `kind` in a readable unit: 5.78 ms, 8.39 MB, 1.21 mJ, 2.35 M params."""
    if kind == "latency":
        return f"{value * 1e3:.3f} ms"
    if kind == "memory":
        return f"{value / 1e6:.3f} MB"
    if kind == "energy":
        return f"{value * 1e3:.4g} mJ"
    return f"{value / 1e6:.4g} M {kind}"


def _parse_one(term: str) -> Budget:
    raw = term.strip()
    kind, _, val = raw.partition("=") if "=" in raw else ("latency", "", raw)
    kind = kind.strip().lower()
    if kind not in UNITS:
        raise HwpruneError(f"--budget {raw!r}: unknown kind '{kind}'; use one of {', '.join(UNITS)} (e.g. {EXAMPLES})")
    units, base = UNITS[kind]
    m = _NUMBER.fullmatch(val)
    if not m:
        raise HwpruneError(f"--budget {raw!r}: expected a fraction like 0.5 or an amount like {_example(kind)}")
    number, unit = float(m.group(1)), m.group(2).lower()
    if unit or (kind in ("params", "macs") and number >= 1):
        if unit and unit not in units:
            raise HwpruneError(f"--budget {raw!r}: unknown unit '{m.group(2)}' for {kind}; use {', '.join(units)}")
        if number <= 0:
            raise HwpruneError(f"--budget {raw!r}: a {kind} budget must be positive")
        return Budget(kind, False, number * units.get(unit, 1.0), raw)
    if not 0 < number < 1:
        raise HwpruneError(
            f"--budget {raw!r}: a fraction of the dense {kind} must be between 0 and 1 (or give {_example(kind)})"
        )
    return Budget(kind, True, number, raw)


def _example(kind: str) -> str:
    return {"latency": "12ms", "memory": "8MB", "energy": "2mJ", "params": "1.5M", "macs": "300M"}[kind]


def parse_budgets(text: str) -> list[Budget]:
    """All the budgets in `text` (comma-separated), each kind at most once."""
    terms = [t for t in text.split(",") if t.strip()]
    if not terms:
        raise HwpruneError(f"--budget is empty; give one or more of: {EXAMPLES}")
    budgets = [_parse_one(t) for t in terms]
    kinds = [b.kind for b in budgets]
    for k in set(kinds):
        if kinds.count(k) > 1:
            raise HwpruneError(f"--budget {text!r}: '{k}' is given more than once")
    return budgets
