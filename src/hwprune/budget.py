"""`--budget` parsing: a fraction of the dense latency (`0.5`) or an absolute time (`12ms`, `0.8s`)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import HwpruneError

_UNITS = {"s": 1.0, "ms": 1e-3, "us": 1e-6}


@dataclass(frozen=True)
class Budget:
    relative: bool
    value: float  # fraction of dense latency, or seconds
    text: str

    def seconds(self, dense_s: float) -> float:
        return self.value * dense_s if self.relative else self.value

    def describe(self) -> str:
        return f"{self.value:g} x dense latency" if self.relative else f"{self.value * 1e3:.3f} ms"


def parse_budget(text: str) -> Budget:
    raw = text.strip()
    kind, _, val = raw.partition("=") if "=" in raw else ("latency", "", raw)
    kind = kind.strip().lower()
    if kind != "latency":
        raise HwpruneError(
            f"--budget {raw!r}: only latency budgets are supported so far (e.g. latency=0.5 or latency=12ms)"
        )
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(ms|us|s)?\s*", val, re.I)
    if not m:
        raise HwpruneError(f"--budget {raw!r}: expected a fraction like 0.5 or a time like 12ms")
    number, unit = float(m.group(1)), (m.group(2) or "").lower()
    if unit:
        if number <= 0:
            raise HwpruneError(f"--budget {raw!r}: a latency budget must be positive")
        return Budget(False, number * _UNITS[unit], raw)
    if not 0 < number < 1:
        raise HwpruneError(f"--budget {raw!r}: a fraction of dense latency must be between 0 and 1 (or give ms)")
    return Budget(True, number, raw)
