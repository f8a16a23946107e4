"""A progress line on stderr for long volumes: ``scan: 120/300 slices, 9.8 slices/s, ETA 0:00:18``.

Why this exists: a 300-slice CT takes minutes on a CPU; without a sign of life users kill the run. The line is
rewritten in place on a terminal and printed at most once per ``interval`` seconds (one line each) into a log file,
so logs stay short. No dependency: the arithmetic is a rate over the slices done so far.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO


class SliceProgress:
    """Reports ``done/total`` slices of one volume, the rate so far and the time left at that rate."""

    def __init__(
        self,
        name: str,
        total: int,
        stream: TextIO | None = None,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name, self.total, self.interval, self.clock = name, total, interval, clock
        self.stream = stream if stream is not None else sys.stderr
        self.start = clock()
        self.last_print: float | None = None

    def update(self, done: int) -> None:
        """Record ``done`` slices finished; print when ``interval`` has passed since the last line, and at the end."""
        now = self.clock()
        if done < self.total and self.last_print is not None and now - self.last_print < self.interval:
            return
        self.last_print = now
        terminal = self.stream.isatty()
        end = "\n" if done >= self.total or not terminal else ""
        self.stream.write(("\r" if terminal else "") + self.line(done, now - self.start) + end)
        self.stream.flush()

    def line(self, done: int, elapsed: float) -> str:
        """``name: done/total slices, R slices/s, ETA h:mm:ss`` (rate and ETA unknown before the first slice)."""
        rate = done / elapsed if elapsed > 0 and done > 0 else None
        if rate is None:
            return f"{self.name}: {done}/{self.total} slices"
        eta = round((self.total - done) / rate)
        clock = f"{eta // 3600}:{eta // 60 % 60:02d}:{eta % 60:02d}"
        return f"{self.name}: {done}/{self.total} slices, {rate:.1f} slices/s, ETA {clock}"
