"""The closed loop: allocate against a predicted figure, measure the real pruned model, correct the aim.

The allocator aims the *predicted* figure of each budget at `aim`; the plan is applied and measured (latency
interleaved with the dense model); each cost model is refitted with the measurement, the aim is corrected by
goal x limit / measured, and this repeats until a plan's measured figures land in [low, high] x limit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hwprune.core.budget import Budget, format_amount
from hwprune.core.errors import HwpruneError
from hwprune.report.schema import LoopFigure, LoopStep

#: Aim the measured latency at 91% of the budget. The interleaved pruned/dense ratio of the same two
#: models moved by up to 4.6% between the loop's measurement and the final one minutes later on this
#: 2-core machine (demo, 0.479 -> 0.4996; MNIST-1D at budget 0.15, a 1.7 ms model, 0.965 -> 1.01 of
#: budget), so the loop accepts at most 95% of the budget.
GOAL = 0.91
#: Accept a plan whose measured latency is within this band of the budget: a plan far under budget throws
#: accuracy away, so the lower edge sits above 85% of it.
ACCEPT_LOW, ACCEPT_HIGH = 0.87, 0.95
#: The loop re-aims by (goal x limit / measured) ** LATENCY_GAIN after each measured plan. A full correction
#: (1) chased the noise: at 0.15 on the demo, a plan measured at 70% of the budget sent the next aim above the
#: limit and that plan measured 119%. Half the correction (in log terms) still converges on a steady misfit
#: of the cost model (the correction accumulates over iterations) while halving the jump a single noisy
#: figure causes (benchmarks/results/noise.md: 9-11% coefficient of variation for a 2 ms plan).
LATENCY_GAIN = 0.5
#: Counted figures (memory, params, MACs, energy) are exact, so the loop aims at the limit itself and
#: accepts a plan at 97-100% of it (width steps of 8 channels rarely land closer).
COUNT_ACCEPT_LOW = 0.97


@dataclass
class Constraint:
    """One budget in the closed loop: its predicted figure for any widths, the limit and the current aim.

    `goal` places the aim under the limit (measured latency is noisy; counts are not); a plan is accepted
    when every figure is <= `high` x limit and at least one is >= `low` x limit (the plan is tight).
    """

    budget: Budget
    cost: object  # anything with predict(widths), add_measurement(widths, figure), dense_widths()
    dense: float
    goal: float
    low: float
    high: float
    #: How much of the last miss the next aim corrects (multiplicatively, as a power): 1 for exact counts.
    gain: float = 1.0

    def __post_init__(self):
        self.kind = self.budget.kind
        self.limit = self.budget.limit(self.dense)
        self.aim = self.limit * self.goal

    @classmethod
    def latency(cls, budget: Budget, cost, dense: float) -> Constraint:
        return cls(budget, cost, dense, GOAL, ACCEPT_LOW, ACCEPT_HIGH, LATENCY_GAIN)

    @classmethod
    def counted(cls, budget: Budget, cost, dense: float) -> Constraint:
        return cls(budget, cost, dense, 1.0, COUNT_ACCEPT_LOW, 1.0)

    def reaim(self, measured: float) -> None:
        """Correct the aim by part of the last miss, never above the dense model's predicted figure."""
        self.aim = min(
            self.aim * (self.goal * self.limit / measured) ** self.gain,
            self.cost.predict(self.cost.dense_widths()) * 1.01,
        )


def in_band(constraints: list[Constraint], measured: list[float]) -> bool:
    """Every figure within its limit's upper edge, and at least one above its lower edge (the budget used)."""
    pairs = list(zip(constraints, measured, strict=True))
    return all(m <= c.high * c.limit for c, m in pairs) and any(m >= c.low * c.limit for c, m in pairs)


def within(constraints: list[Constraint], measured: list[float]) -> bool:
    return all(m <= c.high * c.limit for c, m in zip(constraints, measured, strict=True))


@dataclass
class Candidate:
    value: float
    widths: dict[str, int]
    model: object
    predicted: list[float]


@dataclass
class ClosedLoop:
    """Allocate -> build -> measure -> refit -> re-aim, at most `max_iters` times.

    Args:
        constraints: one per budget.
        allocate: widths for the constraints' current aims.
        build: the pruned model for given widths.
        measure: each constraint's measured figure of a model.
        value: what a plan keeps (the most valuable plan within every budget wins).
        confirm: measure an in-band plan twice and keep the mean (noisy figures only).
        on_first_miss: called once when the first plan is over budget (a feasibility check may raise there).
    """

    constraints: list[Constraint]
    allocate: Callable[[], dict[str, int]]
    build: Callable[[dict[str, int]], object]
    measure: Callable[[object], list[float]]
    value: Callable[[dict[str, int]], float]
    max_iters: int = 8
    confirm: bool = False
    on_first_miss: Callable[[], None] | None = None
    log: Callable[[str], None] = print
    history: list[LoopStep] = field(default_factory=list)

    def _measured(self, model) -> list[float]:
        measured = self.measure(model)
        if self.confirm and in_band(self.constraints, measured):
            # A second measurement before accepting: one in-band figure can be the machine's luck. On this
            # 2-core VM the interleaved ratio of a 2 ms pruned MNIST-1D model to its dense model varies with a
            # 9-11% coefficient of variation between measurements seconds apart, a 5 ms one's 4-7%
            # (benchmarks/results/noise.md). The loop keeps the mean of the two.
            measured = [(a + b) / 2 for a, b in zip(measured, self.measure(model), strict=True)]
        return measured

    def _record(self, it: int, predicted: list[float], measured: list[float]) -> None:
        figures = {
            c.kind: LoopFigure(aim=c.aim, predicted=pr, measured=m, used=m / c.limit)
            for c, pr, m in zip(self.constraints, predicted, measured, strict=True)
        }
        self.history.append(LoopStep(iteration=it + 1, budgets=figures))
        self.log(
            f"  loop {it + 1}: "
            + "; ".join(
                f"{c.kind} aim {format_amount(c.kind, c.aim)}, predicted {format_amount(c.kind, pr)}, "
                f"measured {format_amount(c.kind, m)} ({m / c.limit:.0%} of budget)"
                for c, pr, m in zip(self.constraints, predicted, measured, strict=True)
            )
        )

    def run(self) -> Candidate:
        """The most valuable plan measured within every budget; a one-line error when none was."""
        candidates: list[Candidate] = []
        for it in range(self.max_iters):
            widths = self.allocate()
            predicted = [c.cost.predict(widths) for c in self.constraints]
            model = self.build(widths)
            measured = self._measured(model)
            self._record(it, predicted, measured)
            ok = within(self.constraints, measured)
            if ok:
                candidates.append(Candidate(self.value(widths), widths, model, predicted))
            for c, m in zip(self.constraints, measured, strict=True):
                c.cost.add_measurement(widths, m)
            if in_band(self.constraints, measured):
                break
            for c, m in zip(self.constraints, measured, strict=True):
                c.reaim(m)
            if it == 0 and not ok and self.on_first_miss is not None:
                self.on_first_miss()
        if not candidates:
            raise HwpruneError(self._none_met())
        return max(candidates, key=lambda c: c.value)

    def _none_met(self) -> str:
        closest = min(self.history, key=lambda h: max(h.budgets[c.kind].used for c in self.constraints))
        texts = ",".join(c.budget.text for c in self.constraints)
        return (
            f"no plan met the budget {texts} in {self.max_iters} iterations (closest: "
            + ", ".join(f"{c.kind} {closest.budgets[c.kind].used:.0%} of its limit" for c in self.constraints)
            + "); raise the budget or --max-iters"
        )
