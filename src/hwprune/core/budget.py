"""`--budget` parsing: what the pruned model must fit, per resource.

One or more comma-separated `KIND=VALUE` terms, each KIND at most once, all enforced together:

- `latency=0.5` (fraction of the dense latency measured on the target) or `latency=12ms` (`s`, `ms`, `us`);
- `memory=8MB`: weights + peak activations, bytes (`B`, `KB`, `MB`, `GB` are powers of 1000, `KiB`, `MiB`,
  `GiB` powers of 1024), or a fraction of the dense model's;
- `energy=2mJ`: energy per inference from the target's energy model (`J`, `mJ`, `uJ`), or a fraction;
- `params=1.5M`, `macs=300M`: counts (`K`, `M`, `G` suffixes; a bare whole number above 1 is a count too),
  or a fraction;
- `prefill=0.5` / `decode=0.7`: latency of a causal language model in one regime, as `latency=`: prefill
  is the prompt in one call (the example inputs), decode one token with the KV cache at the prompt's length
  as context (`hwprune.hardware.regime`). One regime is budgeted per run; the other is measured and reported.

A fraction is in (0, 1]: 1 keeps the dense figure. A bare number (`0.5`) is a latency fraction of dense.
Every malformed term is a one-line `HwpruneError` that names the term and what to write instead.
"""

from __future__ import annotations

import dataclasses
import math
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
#: Budget kinds that are latency in a regime of a causal language model (`hwprune.hardware.regime`).
REGIME_KINDS = ("prefill", "decode")
#: The suffix `Budget.to_text` writes an absolute amount in: the base unit (multiplier 1), so the text
#: holds the exact float.
_CANONICAL_UNIT = {"latency": "s", "memory": "B", "energy": "J"}
EXAMPLES = "latency=0.5, latency=12ms, memory=8MB, energy=2mJ, params=1.5M, macs=300M"
_NUMBER = re.compile(r"\s*([+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:e[+-]?[0-9]+)?)\s*([a-z]*)\s*", re.I)
_NONFINITE = re.compile(r"\s*[+-]?(?:nan|inf|infinity)\s*[a-z]*\s*", re.I)


@dataclass(frozen=True)
class Budget:
    kind: str  # latency | memory | energy | params | macs
    relative: bool
    value: float  # fraction of the dense model's figure, or an absolute amount in the kind's base unit
    text: str
    #: A latency budget's regime (`prefill`, `decode`); None: the model called on its example inputs.
    regime: str | None = None

    def limit(self, dense: float) -> float:
        """The absolute limit, given the dense model's figure of the same kind."""
        return self.value * dense if self.relative else self.value

    def describe(self) -> str:
        if self.relative:
            return f"{self.value:g} x dense {self.kind}"
        return format_amount(self.kind, self.value)

    def to_text(self) -> str:
        """A term that parses back to this budget's kind, relative flag and value exactly."""
        name = self.regime or self.kind
        if self.relative:
            return f"{name}={self.value!r}"
        if self.kind in ("params", "macs"):  # a whole count; a bare 1 would read as the fraction 1
            return f"{self.kind}={int(self.value)}" if self.value > 1 else f"{self.kind}=0.001K"
        return f"{name}={self.value!r}{_CANONICAL_UNIT[self.kind]}"


def format_amount(kind: str, value: float) -> str:
    """A figure of `kind` in a readable unit: 5.78 ms, 8.39 MB, 1.21 mJ, 2.35 M params."""
    if kind == "latency":
        return f"{value * 1e3:.3f} ms"
    if kind == "memory":
        return f"{value / 1e6:.3f} MB"
    if kind == "energy":
        return f"{value * 1e3:.4g} mJ"
    return f"{value / 1e6:.4g} M {kind}"


def _fail(raw: str, why: str) -> HwpruneError:
    return HwpruneError(f"--budget {raw!r}: {why}")


def _split_kind(raw: str) -> tuple[str, str]:
    if "=" not in raw:
        return "latency", raw
    kind, _, val = raw.partition("=")
    kind = kind.strip().lower()
    if kind in REGIME_KINDS:
        kind = "latency"  # its regime is read off the term again in _parse_one
    if not kind:
        raise _fail(raw, f"missing the kind before '='; use one of {', '.join(UNITS)} (e.g. {EXAMPLES})")
    if kind not in UNITS:
        kinds = ", ".join((*UNITS, *REGIME_KINDS))
        raise _fail(raw, f"unknown kind '{kind}'; use one of {kinds} (e.g. {EXAMPLES})")
    if not val.strip():
        raise _fail(raw, f"no value after '='; give a fraction like 0.5 or an amount like {_example(kind)}")
    return kind, val


def _absolute(raw: str, kind: str, number: float, unit: str) -> Budget:
    units = UNITS[kind][0]
    if unit and unit not in units:
        raise _fail(raw, f"unknown unit '{unit}' for {kind}; use {', '.join(units)}")
    if number <= 0:
        raise _fail(raw, f"a {kind} budget must be positive, got {number:g}")
    value = number * units.get(unit, 1.0)
    if not math.isfinite(value):
        raise _fail(raw, f"{number:g}{unit} is too large; give a finite amount like {_example(kind)}")
    if kind in ("params", "macs"):
        if not unit and value != int(value):
            hint = f"did you mean {number:g}M?"
            raise _fail(raw, f"a count of {kind} is a whole number (or a fraction in (0, 1]); {hint}")
        value = float(round(value))  # a count: 1.5K is 1500, however the float product rounds
        if value < 1:
            raise _fail(raw, f"{number:g}{unit} is less than one {kind[:-1]}; give a larger count or a fraction")
    return Budget(kind, False, value, raw)


def _parse_one(term: str) -> Budget:
    b = _parse_amount(term)
    regime = term.partition("=")[0].strip().lower() if "=" in term else None
    return dataclasses.replace(b, regime=regime) if regime in REGIME_KINDS else b


def _parse_amount(term: str) -> Budget:
    raw = term.strip()
    kind, val = _split_kind(raw)
    if _NONFINITE.fullmatch(val):
        raise _fail(raw, f"the {kind} budget must be a finite number like 0.5 or {_example(kind)}")
    m = _NUMBER.fullmatch(val)
    if not m:
        raise _fail(raw, f"expected a fraction like 0.5 or an amount like {_example(kind)}")
    number, unit = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(number):
        raise _fail(raw, f"{m.group(1)} is too large; give a finite amount like {_example(kind)}")
    if number < 0:
        raise _fail(raw, f"a {kind} budget must be positive, got {number:g}")
    if unit or (kind in ("params", "macs") and number > 1):
        return _absolute(raw, kind, number, unit)
    if number == 0:
        raise _fail(raw, f"a fraction of the dense {kind} must be above 0 (and at most 1)")
    if number > 1:
        raise _fail(
            raw, f"a fraction of the dense {kind} must be between 0 and 1 (0 < x <= 1), or give {_example(kind)}"
        )
    return Budget(kind, True, number, raw)


def _example(kind: str) -> str:
    return {"latency": "12ms", "memory": "8MB", "energy": "2mJ", "params": "1.5M", "macs": "300M"}[kind]


def parse_budgets(text: str) -> list[Budget]:
    """All the budgets in `text` (comma-separated), each kind at most once."""
    if not isinstance(text, str):
        raise HwpruneError(f"--budget must be text like {EXAMPLES!r}, got {type(text).__name__}")
    if not text.strip():
        raise HwpruneError(f"--budget is empty; give one or more of: {EXAMPLES}")
    terms = text.split(",")
    for i, t in enumerate(terms):
        if not t.strip():
            where = "at the end" if i == len(terms) - 1 else ("at the start" if i == 0 else "between two commas")
            raise HwpruneError(f"--budget {text!r}: empty term {where}; remove the extra comma")
    budgets = [_parse_one(t) for t in terms]
    seen: dict[str, Budget] = {}
    for b in budgets:
        if b.kind in seen:
            first = seen[b.kind]
            if first.regime != b.regime:
                raise HwpruneError(
                    f"--budget {text!r}: {first.text} and {b.text} both budget latency; give one "
                    "(prefill= or decode=), the other regime's latency is measured and reported"
                )
            clash = "repeat each other" if (first.relative, first.value) == (b.relative, b.value) else "contradict"
            raise HwpruneError(
                f"--budget {text!r}: '{b.kind}' is given more than once ({first.text} and {b.text} {clash}); keep one"
            )
        seen[b.kind] = b
    return budgets
