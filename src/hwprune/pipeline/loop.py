"""The closed loop: allocate against a predicted figure, measure the real pruned model, correct the aim.

The allocator aims the *predicted* figure of each budget at `aim`; the plan is applied and measured (latency
interleaved with the dense model, with a 95% confidence interval); each cost model is refitted with the
measurement, the aim is corrected by goal x limit / measured, and this repeats until a plan's interval lies
inside [waste, 1] x limit. An interval that straddles either edge is measured again (pooled) before the loop
re-plans: one measurement's luck does not decide.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from hwprune.core.budget import Budget, format_amount
from hwprune.core.errors import HwpruneError
from hwprune.cost.progress import Stage
from hwprune.hardware.timing import Estimate, estimate
from hwprune.report.schema import LoopFigure, LoopStep

#: Aim the measured latency at 91% of the budget: the middle of [0.85, 1] less the ~2% half-width of the
#: interval the adaptive protocol reaches (hardware.timing.MODEL_PROTOCOL).
GOAL = 0.91
#: A plan is accepted when the upper end of its latency interval is within the budget and the lower end is
#: above WASTE x the budget: a plan far under budget throws accuracy away.
WASTE = 0.85
#: ... and the upper end below ACCEPT_HIGH x the budget: the same plan re-measured minutes later moved by up
#: to +6% here (benchmarks/bench_loop.py, 2026-12-02: a plan accepted at 93% re-measured at 99%; the
#: bench_noise pair drifted +5% over two minutes), so a plan whose interval reaches the budget itself is too
#: close to it to stay met.
ACCEPT_HIGH = 0.97
#: Extra measurements (pooled with the first) of a plan whose interval straddles the budget or the waste
#: line, before the loop decides on it.
MAX_EXTRA = 2
#: The loop re-aims by (goal x limit / measured) ** LATENCY_GAIN after each measured plan. A full correction
#: (1) chased the noise: at 0.15 on the demo, a plan measured at 70% of the budget sent the next aim above the
#: limit and that plan measured 119%. Half the correction (in log terms) still converges on a steady misfit
#: of the cost model (the correction accumulates over iterations) while halving the jump a single noisy
#: figure causes (benchmarks/results/noise.md: 9-11% coefficient of variation for a 2 ms plan).
LATENCY_GAIN = 0.5
#: Counted figures (memory, params, MACs, energy) are exact, so the loop aims at the limit itself and
#: accepts a plan at 97-100% of it (width steps of 8 channels rarely land closer).
COUNT_ACCEPT_LOW = 0.97


def exact(value: float) -> Estimate:
    """A counted figure: its interval is the figure itself."""
    return Estimate(value, value, value, 1, "counted")


def pooled(a: Estimate, b: Estimate) -> Estimate:
    """Two measurements of the same plan as one: their rounds together (counted figures: unchanged)."""
    if not a.samples or not b.samples:
        return a
    return estimate(a.samples + b.samples, a.estimator)


@dataclass
class Constraint:
    """One budget in the closed loop: its predicted figure for any widths, the limit and the current aim.

    `goal` places the aim under the limit (measured latency is noisy; counts are not); a plan is accepted
    when every figure's interval is within the limit and at least one lies above `waste` x limit.
    """

    budget: Budget
    cost: object  # anything with predict(widths), add_measurement(widths, figure), dense_widths()
    dense: float
    goal: float
    waste: float
    #: How much of the last miss the next aim corrects (multiplicatively, as a power): 1 for exact counts.
    gain: float = 1.0
    #: Accept only when the interval's upper end is below high x limit.
    high: float = 1.0

    def __post_init__(self):
        self.kind = self.budget.kind
        self.limit = self.budget.limit(self.dense)
        self.aim = self.limit * self.goal

    @classmethod
    def latency(cls, budget: Budget, cost, dense: float) -> Constraint:
        return cls(budget, cost, dense, GOAL, WASTE, LATENCY_GAIN, ACCEPT_HIGH)

    @classmethod
    def counted(cls, budget: Budget, cost, dense: float) -> Constraint:
        return cls(budget, cost, dense, 1.0, COUNT_ACCEPT_LOW)

    def reaim(self, measured: float, widths: dict[str, int] | None = None) -> None:
        """Correct the aim by part of the last miss, never above the dense model's predicted figure.

        When the plan at `widths` measured over the limit, the new aim is also below what the (refitted) model
        now predicts for that plan, by the same correction: else a fit that still predicts it under the aim
        picks it again. ViT-L/32 at macs=0.5 did that 5 times at 100.002% of the limit (the aim moved by the
        0.002% miss, the least-squares remainder by less) and the loop kept a plan at 94.4%.
        """
        step = (self.goal * self.limit / measured) ** self.gain
        aim = self.aim * step
        if widths is not None and measured > self.limit:
            aim = min(aim, self.cost.predict(widths) * min(step, 1.0 - 1e-3))
        self.aim = min(aim, self.cost.predict(self.cost.dense_widths()) * 1.01)

    def certain_within(self, e: Estimate) -> bool:
        return e.high <= self.limit

    def safely_within(self, e: Estimate) -> bool:
        return e.high <= self.high * self.limit

    def certain_used(self, e: Estimate) -> bool:
        return e.low >= self.waste * self.limit

    def straddles(self, e: Estimate) -> bool:
        """The interval holds the limit or the waste line: more rounds could settle which side it is."""
        return any(e.low < edge < e.high for edge in (self.high * self.limit, self.waste * self.limit))


def in_band(constraints: list[Constraint], measured: list[Estimate]) -> bool:
    """Every interval safely within its limit, and at least one above its waste line (the budget is used)."""
    pairs = list(zip(constraints, measured, strict=True))
    return all(c.safely_within(m) for c, m in pairs) and any(c.certain_used(m) for c, m in pairs)


def within(constraints: list[Constraint], measured: list[Estimate]) -> bool:
    """Every median within its limit (a plan the loop may fall back on)."""
    return all(m.value <= c.limit for c, m in zip(constraints, measured, strict=True))


def confident(constraints: list[Constraint], measured: list[Estimate]) -> bool:
    """Every upper bound within its limit: met at 95% confidence."""
    return all(c.certain_within(m) for c, m in zip(constraints, measured, strict=True))


@dataclass
class Candidate:
    value: float
    widths: dict[str, int]
    model: object
    predicted: list[float]
    measured: list[Estimate] = field(default_factory=list)
    confident: bool = True
    safe: bool = True  # every interval below the accept line (ACCEPT_HIGH x limit for latency)


@dataclass
class ClosedLoop:
    """Allocate -> build -> measure -> refit -> re-aim, at most `max_iters` times.

    Args:
        constraints: one per budget.
        allocate: widths for the constraints' current aims.
        build: the pruned model for given widths.
        measure: each constraint's measured figure of a model, as an Estimate (`exact(count)` for counts).
        value: what a plan keeps (the most valuable plan within every budget wins).
        max_extra: extra measurements of a plan whose interval straddles a limit or a waste line.
        on_first_miss: called once when the first plan is over budget (a feasibility check may raise there).
    """

    constraints: list[Constraint]
    allocate: Callable[[], dict[str, int]]
    build: Callable[[dict[str, int]], object]
    measure: Callable[[object], list[Estimate]]
    value: Callable[[dict[str, int]], float]
    max_iters: int = 8
    max_extra: int = MAX_EXTRA
    on_first_miss: Callable[[], None] | None = None
    log: Callable[[str], None] = print
    history: list[LoopStep] = field(default_factory=list)
    #: A bar over the iterations (ETA) on a terminal, one line at the end otherwise; False: nothing (--quiet).
    progress: bool = True

    def _measured(self, model) -> tuple[list[Estimate], int]:
        """The plan's figures, measured again and pooled while an interval straddles an edge."""
        measured, times = self.measure(model), 1
        while times <= self.max_extra and any(c.straddles(m) for c, m in zip(self.constraints, measured, strict=True)):
            measured = [pooled(a, b) for a, b in zip(measured, self.measure(model), strict=True)]
            times += 1
        return measured, times

    def _record(self, it: int, predicted: list[float], measured: list[Estimate], times: int) -> None:
        figures = {
            c.kind: LoopFigure(
                aim=c.aim,
                predicted=pr,
                measured=m.value,
                used=m.value / c.limit,
                low=m.low,
                high=m.high,
                measurements=times,
            )
            for c, pr, m in zip(self.constraints, predicted, measured, strict=True)
        }
        self.history.append(LoopStep(iteration=it + 1, budgets=figures))
        self.log(
            f"  loop {it + 1}: "
            + "; ".join(
                f"{c.kind} aim {format_amount(c.kind, c.aim)}, predicted {format_amount(c.kind, pr)}, "
                f"measured {format_amount(c.kind, m.value)}"
                + (f" [{m.low / c.limit:.0%}, {m.high / c.limit:.0%}]" if m.high > m.low else "")
                + f" ({m.value / c.limit:.0%} of budget)"
                for c, pr, m in zip(self.constraints, predicted, measured, strict=True)
            )
            + (f" ({times} measurements pooled)" if times > 1 else "")
        )

    def run(self) -> Candidate:
        """The most valuable plan whose intervals are below the accept line, else the most valuable met at 95%
        confidence, else the most valuable met on the median; a one-line error when no plan's median was
        within every budget."""
        with Stage("closed loop", self.max_iters, "iteration", self.progress) as bar:
            candidates = self._iterate(bar)
        if not candidates:
            raise HwpruneError(self._none_met())
        return max(candidates, key=lambda c: (c.safe, c.confident, c.value))

    def _iterate(self, bar: Stage) -> list[Candidate]:
        candidates: list[Candidate] = []
        for it in range(self.max_iters):
            widths = self.allocate()
            predicted = [getattr(c.cost, "physical", c.cost.predict)(widths) for c in self.constraints]
            model = self.build(widths)
            measured, times = self._measured(model)
            self._record(it, predicted, measured, times)
            bar.update(1)
            bar.set_postfix(
                **{c.kind: f"{m.value / c.limit:.0%}" for c, m in zip(self.constraints, measured, strict=True)}
            )
            ok = within(self.constraints, measured)
            if ok:
                sure = confident(self.constraints, measured)
                safe = all(c.safely_within(m) for c, m in zip(self.constraints, measured, strict=True))
                candidates.append(Candidate(self.value(widths), widths, model, predicted, measured, sure, safe))
            for c, m in zip(self.constraints, measured, strict=True):
                c.cost.add_measurement(widths, m.value)
            if in_band(self.constraints, measured):
                break
            for c, m in zip(self.constraints, measured, strict=True):
                c.reaim(m.value, widths)
            if it == 0 and not ok and self.on_first_miss is not None:
                self.on_first_miss()
        return candidates

    def _none_met(self) -> str:
        closest = min(self.history, key=lambda h: max(h.budgets[c.kind].used for c in self.constraints))
        texts = ",".join(c.budget.text for c in self.constraints)
        return (
            f"no plan met the budget {texts} in {self.max_iters} iterations (closest: "
            + ", ".join(f"{c.kind} {closest.budgets[c.kind].used:.0%} of its limit" for c in self.constraints)
            + "); raise the budget or --max-iters"
        )
