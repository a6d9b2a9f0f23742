"""Is the machine steady enough to believe a latency figure? CPU steal time, clock frequency and the dense
model's own drift over a run.

On a shared VM another tenant's load shows up as *steal* time in /proc/stat (the hypervisor ran someone else
on our vCPU), a frequency governor as changing `scaling_cur_freq`, and both as the dense model's latency
moving between measurements of the same run. Where a counter is missing (macOS, containers without /sys)
its figure is None and only the others are judged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

#: The dense model's slowest median over its fastest in one run above this: the run's figures are not to be
#: trusted as they stand. On this 2-core VM a quiet demo run's interleaved dense medians moved 6.41-7.64 ms
#: (19%) in 84 s (2026-12-02); a run with a co-tenant went from 17 ms to 31 ms (80%, benchmarks/results/
#: noise.md). The ratios the report states cancel most of a drift both models share.
DRIFT_LIMIT = 0.30
#: Share of CPU time stolen by the hypervisor above this: another tenant is competing for our cores.
STEAL_LIMIT = 0.05
#: Highest over lowest CPU clock seen above this: the frequency changed under the measurement.
FREQ_LIMIT = 0.10

_PROC_STAT = Path("/proc/stat")
_CPUFREQ = Path("/sys/devices/system/cpu")


def _cpu_jiffies() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs since boot; None where /proc/stat is absent."""
    try:
        fields = _PROC_STAT.read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return None
    values = [int(v) for v in fields[1:]]
    steal = values[7] if len(values) > 7 else 0
    return steal, sum(values[:8])


def _freqs_mhz() -> list[float]:
    out = []
    for p in sorted(_CPUFREQ.glob("cpu[0-9]*/cpufreq/scaling_cur_freq")):
        try:
            out.append(int(p.read_text()) / 1000)
        except (OSError, ValueError):
            continue
    return out


@dataclass
class MachineState:
    """What the machine did during a run, and whether its figures can be trusted as they stand."""

    seconds: float
    steal_fraction: float | None = None
    freq_mhz_low: float | None = None
    freq_mhz_high: float | None = None
    #: Slowest over fastest dense-model median in the run, minus 1 (0.12: the same model ran 12% slower).
    dense_drift: float | None = None
    dense_medians_ms: list[float] = field(default_factory=list)
    stable: bool = True
    warnings: list[str] = field(default_factory=list)


class MachineMonitor:
    """Started at the beginning of a run; `state(dense_medians)` at the end judges it."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.jiffies = _cpu_jiffies()
        self.freqs = _freqs_mhz()

    def state(self, dense_medians: list[float]) -> MachineState:
        self.freqs += _freqs_mhz()  # the clock at the end as well as at the start
        out = MachineState(seconds=time.perf_counter() - self.t0)
        now = _cpu_jiffies()
        if self.jiffies is not None and now is not None and now[1] > self.jiffies[1]:
            out.steal_fraction = (now[0] - self.jiffies[0]) / (now[1] - self.jiffies[1])
            if out.steal_fraction > STEAL_LIMIT:
                out.warnings.append(f"{out.steal_fraction:.0%} of CPU time was stolen by the hypervisor")
        if self.freqs:
            out.freq_mhz_low, out.freq_mhz_high = min(self.freqs), max(self.freqs)
            if out.freq_mhz_low > 0 and out.freq_mhz_high / out.freq_mhz_low - 1 > FREQ_LIMIT:
                out.warnings.append(
                    f"the CPU clock moved between {out.freq_mhz_low:.0f} and {out.freq_mhz_high:.0f} MHz"
                )
        out.dense_medians_ms = [m * 1e3 for m in dense_medians]
        if len(dense_medians) >= 2:
            out.dense_drift = max(dense_medians) / min(dense_medians) - 1
            if out.dense_drift > DRIFT_LIMIT:
                out.stable = False
                out.warnings.append(
                    f"the dense model's latency drifted {out.dense_drift:.0%} during the run "
                    f"({min(out.dense_medians_ms):.3f}-{max(out.dense_medians_ms):.3f} ms)"
                )
        return out
