"""`hwprune sweep`: one run per budget x allocator on the same model and data, sharing the latency table
(the cache: the first run measures it, the others read it), and one page with the trade-off."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from hwprune.core.errors import HwpruneError
from hwprune.report.sweep import Sweep, SweepPoint, write_sweep


def point_dir(out: Path, allocator: str, budget: float) -> Path:
    return out / f"{allocator}-{budget:g}"


def check_sweep_out(out: str | Path) -> Path:
    """A new or empty directory, or an earlier sweep's (it is replaced point by point)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "sweep.json").exists())):
        raise HwpruneError(f"--out {out} exists and is not an hwprune sweep directory; choose another path")
    return out


def parse_budgets(text: str) -> list[float]:
    try:
        values = [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise HwpruneError(f"--budgets {text!r}: give fractions of dense latency, e.g. 0.3,0.5,0.7,0.9") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise HwpruneError(f"--budgets {text!r}: every budget must be a fraction in (0, 1], e.g. 0.3,0.5,0.7,0.9")
    return values


def sweep(
    run_point: Callable[[float, str], object],
    budgets: list[float],
    allocators: list[str],
    out: str | Path,
    record: Sweep,
    log: Callable[[str], None] = print,
) -> Sweep:
    """Run `run_point(budget, allocator)` (a PruneResult) for every pair and save each under OUT/ALLOC-BUDGET/;
    each point goes into `record`, and OUT/index.html, index.md and sweep.json are rewritten after every one
    (a killed sweep keeps what it finished). A point that raises HwpruneError is recorded as failed."""
    out = check_sweep_out(out)
    for budget in budgets:
        for allocator in allocators:
            where = point_dir(out, allocator, budget)
            log(f"sweep: {allocator} latency={budget:g} -> {where}")
            t0 = time.perf_counter()
            try:
                result = run_point(budget, allocator)
                result.save(where, overwrite=True)
                point = SweepPoint.from_report(budget, allocator, str(where), result.report, time.perf_counter() - t0)
            except HwpruneError as e:
                point = SweepPoint(budget=budget, allocator=allocator, status="failed", error=str(e).splitlines()[0])
                log(f"sweep: {allocator} latency={budget:g} failed: {point.error}")
            record.points.append(point)
            write_sweep(out, record)
    return record
