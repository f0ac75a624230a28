"""Progress of long work a person can read: a rich bar on a terminal, a plain line every ~10% otherwise.

`Progress(total, what)` is used by every long non-training stage (pairs, label, eval, expand) through
`ActorGroup.map_unordered`; `update(done)` may be called as often as work finishes.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("batray.progress")


class Progress:
    """`total` items of `what`; a rich bar (items / total, rate, ETA) when stderr is a terminal."""

    def __init__(self, total: int, what: str, *, unit: str = "items"):
        self.total, self.what, self.unit = total, what, unit
        self.start = time.perf_counter()
        self.done = 0
        self._next_log = 0.1
        self._bar = None
        if sys.stderr.isatty() and total > 0:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress as RichProgress, TaskProgressColumn
            from rich.progress import TimeRemainingColumn

            self._bar = RichProgress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                                     TaskProgressColumn(), TimeRemainingColumn(), transient=True)
            self._bar.start()
            self._task = self._bar.add_task(what, total=total)

    @property
    def rate(self) -> float:
        return self.done / max(time.perf_counter() - self.start, 1e-9)

    def update(self, done: int) -> None:
        self.done = done
        if self._bar is not None:
            self._bar.update(self._task, completed=done)
            return
        if self.total and (done >= self._next_log * self.total or done == self.total):
            left = (self.total - done) / self.rate if self.rate > 0 else float("nan")
            log.info("%s: %d/%d %s (%.1f %s/s, ETA %.0fs)", self.what, done, self.total, self.unit, self.rate,
                     self.unit, left)
            while self._next_log * self.total <= done:
                self._next_log += 0.1

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
