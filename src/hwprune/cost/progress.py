"""Progress of a long stage (latency table, sensitivity, closed loop): a bar with an ETA on a terminal, one
line per stage in a log."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


def _terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed by the caller
        return False


class Stage:
    """A long stage's progress. On a terminal: a tqdm bar on stderr with its ETA. With stderr not a terminal (a
    log file, CI): no bar, one line when the stage ends, e.g. "latency table: 54 layers in 105.2 s
    (measured=1153, cached=0)". With `progress=False` (`--quiet`): nothing, so that an error stays the only
    line a quiet run prints (tests/cli: one-line errors)."""

    def __init__(
        self, desc: str, total: int | None, unit: str, progress: bool = True, leave: bool = True, line: bool = True
    ):
        self.desc, self.unit, self.done, self.print_line, self.progress = desc, unit, 0, line, progress
        self.postfix: dict = {}
        self.t0 = time.perf_counter()
        self.bar = tqdm(total=total, desc=desc, unit=unit, leave=leave) if progress and _terminal() else None

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)

    def set_postfix(self, **kw) -> None:
        self.postfix.update(kw)
        if self.bar is not None:
            self.bar.set_postfix(**kw)

    def line(self) -> str:
        extra = ", ".join(f"{k}={v}" for k, v in self.postfix.items())
        n = f"{self.done} {self.unit}{'' if self.done == 1 else 's'}"
        return f"{self.desc}: {n} in {time.perf_counter() - self.t0:.1f} s" + (f" ({extra})" if extra else "")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.print_line and self.progress:
            print(self.line(), file=sys.stderr, flush=True)

    def __enter__(self) -> Stage:
        return self

    def __exit__(self, exc_type, *rest) -> None:
        if exc_type is None:
            self.close()
        elif self.bar is not None:  # an error or Ctrl-C: the bar goes, no summary line of a stage not done
            self.bar.close()
