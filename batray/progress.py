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
            from rich.progress import BarColumn, MofNCompleteColumn, TaskProgressColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

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


def format_eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # nan: no rate yet
        return "ETA ?"
    s = int(round(seconds))
    return f"ETA {s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def headline(m: dict) -> list[str]:
    """The values a person reads first in a training metrics row, formatted."""
    parts = []
    for key, fmt in (("loss", "loss {:.4f}"), ("loss_l2r", "l2r {:.4f}"), ("loss_r2l", "r2l {:.4f}"),
                     ("loss_response", "loss {:.4f}"), ("eval_loss", "eval {:.4f}"),
                     ("eval_loss_l2r", "eval_l2r {:.4f}"),
                     ("eval_loss_r2l", "eval_r2l {:.4f}"), ("accuracy", "acc {:.3f}"),
                     ("eval_accuracy", "eval_acc {:.3f}"), ("reward", "reward {:.3f}"), ("kl", "kl {:.4f}"),
                     ("value_loss", "value_loss {:.4f}"), ("lr", "lr {:.2e}"), ("tokens_per_s", "{:.0f} tok/s"),
                     ("time_step", "{:.1f}s/step")):
        if key == "loss_response" and "loss" in m:
            continue
        if key in m and isinstance(m[key], float):
            parts.append(fmt.format(m[key]))
    return parts


class StepProgress:
    """A training stage's progress: step / total, loss, tokens/s, ETA.

    mode `bar` (`auto` on a terminal): one rich bar on stderr; `lines` (`auto` otherwise): a plain
    line on stdout per metrics row, as `ray job submit` logs show them. The ETA is the steps left at
    the rate of the steps done since this run started (a resumed run starts at its checkpoint's step).
    Times are the sender's (`t`: rank 0's clock), so the driver's polling delay does not skew them.
    """

    def __init__(self, stage: str, max_steps: int, *, mode: str = "auto"):
        self.stage, self.max_steps = stage, max_steps
        self.bar = mode == "bar" or (mode == "auto" and sys.stderr.isatty())
        self._first: tuple[int, float] | None = None  # (step, time) when this run started
        self._last: tuple[int, float] | None = None
        self._info = ""
        self._rich = self._task = None

    def _start_bar(self, step: int) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RichProgress

        self._rich = RichProgress(TextColumn(f"[bold]{self.stage}"), BarColumn(), MofNCompleteColumn(),
                                  TextColumn("steps"), TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                  console=Console(stderr=True, force_terminal=True), transient=False)
        self._rich.start()
        self._task = self._rich.add_task(self.stage, total=self.max_steps, completed=step, info="")

    def eta(self) -> float:
        if self._first is None or self._last is None or self._last[0] <= self._first[0]:
            return float("nan")
        rate = (self._last[0] - self._first[0]) / max(self._last[1] - self._first[1], 1e-9)
        return (self.max_steps - self._last[0]) / rate

    def start(self, step: int, t: float | None = None) -> None:
        self._first = self._last = (step, t if t is not None else time.time())
        if self.bar and self._rich is None:
            self._start_bar(step)

    def step(self, step: int, t: float | None = None) -> None:
        if self._first is None:
            self.start(step - 1, t)
        self._last = (step, t if t is not None else time.time())
        if self._rich is not None:
            self._rich.update(self._task, completed=step, info=f"{self._info}  {format_eta(self.eta())}".strip())

    def metrics(self, row: dict) -> None:
        step = int(row["step"])
        if self._last is None or step > self._last[0]:
            self.step(step, row.get("time"))
        if self._rich is not None:
            self._info = "  ".join(p for p in headline(row) if not p.startswith("lr "))
            self._rich.update(self._task, info=f"{self._info}  {format_eta(self.eta())}")
            return
        print("  ".join([f"[{self.stage}] step {step}/{self.max_steps}", *headline(row), format_eta(self.eta())]),
              flush=True)

    def close(self) -> None:
        if self._rich is not None:
            self._rich.stop()
            self._rich = None
