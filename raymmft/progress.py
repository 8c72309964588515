"""A line of progress about every ten seconds for the long phases (mining, evaluating):

    mining negatives: 42,000/140,572 words, 310 words/s, ETA 5 min

printed (flushed) wherever the work runs: on a Ray worker the line reaches the driver's log.
"""

from __future__ import annotations

import time
from collections.abc import Callable

DEFAULT_EVERY_S = 10.0


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def say(message: str) -> None:
    print(message, flush=True)


class Progress:
    """Counts ``done`` of ``total`` ``unit``s of ``what`` and says so every ``every`` seconds."""

    def __init__(
        self,
        what: str,
        total: int,
        unit: str,
        *,
        every: float = DEFAULT_EVERY_S,
        out: Callable[[str], None] | None = say,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.what, self.total, self.unit, self.every = what, int(total), unit, every
        self.out, self.clock = out, clock
        self.done = 0
        self.start = self._last = clock()

    def line(self) -> str:
        elapsed = max(self.clock() - self.start, 1e-9)
        rate = self.done / elapsed
        text = f"{self.what}: {self.done:,}/{self.total:,} {self.unit}, {rate:,.0f} {self.unit}/s"
        if 0 < self.done < self.total and rate > 0:
            text += f", ETA {_duration((self.total - self.done) / rate)}"
        return text

    def update(self, n: int) -> None:
        self.done += int(n)
        now = self.clock()
        if self.out is not None and now - self._last >= self.every:
            self._last = now
            self.out(self.line())

    def finish(self) -> float:
        """Say the phase is over (when it took long enough to have said anything); its seconds."""
        seconds = self.clock() - self.start
        if self.out is not None and seconds >= self.every:
            self.out(f"{self.what}: {self.done:,} {self.unit} in {_duration(seconds)}")
        return seconds
