"""What the driver shows and records while Ray Train workers (or its own training thread) train: progress and
tracker rows.

Training runs in Ray Train worker processes, whose stdout is not a terminal (Ray forwards it to the
driver's log), so the driver draws the progress. Rank 0 pushes small messages to a `ProgressChannel`
actor, without waiting for an answer: `start` (the step it starts from) once, `step` after every
optimizer step, and each `metrics.jsonl` row. A driver thread takes what has arrived twice a second
and hands it to a `batray.progress.StepProgress` (a rich bar on a terminal, plain lines otherwise)
and to the stage's trackers (`batray.trackers`), so every row is logged once, by the driver.
"""

from __future__ import annotations

import logging
import threading

log = logging.getLogger("batray.train")

POLL_S = 0.5  # how often the driver takes the channel's messages (display latency, not synchronization)


class ProgressChannel:
    """A mailbox: rank 0 `push`es messages, the driver `take`s everything pushed so far, in order. An actor
    for a Ray Train job; a plain object shared by the training and monitor threads of an in-process one."""

    def __init__(self):
        self._messages: list[dict] = []
        self._lock = threading.Lock()

    def push(self, message: dict) -> None:
        with self._lock:
            self._messages.append(message)

    def take(self) -> list[dict]:
        with self._lock:
            out, self._messages = self._messages, []
        return out


class StageMonitor:
    """Driver side: the channel, the thread that drains it, the progress display and the trackers.

    `with StageMonitor(...) as mon: trainer.fit()` and pass `mon.channel` to rank 0. `in_process`: rank 0
    runs in this process, the channel is a plain `ProgressChannel` (no Ray)."""

    def __init__(self, stage: str, max_steps: int, *, trackers=None, mode: str = "auto", in_process: bool = False):
        from batray.progress import StepProgress

        self.in_process = in_process
        if in_process:
            self.channel = ProgressChannel()
        else:
            import ray

            self.channel = ray.remote(num_cpus=0)(ProgressChannel).remote()
        self._progress = StepProgress(stage, max_steps, mode=mode)
        self._trackers = trackers
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"batray-monitor-{stage}", daemon=True)
        self._failed = False

    def __enter__(self) -> "StageMonitor":
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self._drain()  # what rank 0 pushed just before the run ended
        except Exception as e:  # noqa: BLE001 - the run's own outcome matters more than its last rows
            log.warning("progress channel: %s", e)
        self._progress.close()
        if self._trackers is not None:
            self._trackers.close(failed=exc_type is not None or self._failed)
        if not self.in_process:
            import ray

            ray.kill(self.channel)

    def _run(self) -> None:
        while not self._stop.wait(POLL_S):
            try:
                self._drain()
            except Exception as e:  # noqa: BLE001 - keep training; report once
                if not self._failed:
                    log.warning("progress channel: %s (progress and trackers stop here)", e)
                self._failed = True
                return

    def _drain(self) -> None:
        if self.in_process:
            messages = self.channel.take()
        else:
            import ray

            messages = ray.get(self.channel.take.remote())
        for message in messages:
            kind, t = message.pop("kind"), message.pop("t", None)
            if kind == "start":
                self._progress.start(message["step"], t)
            elif kind == "step":
                self._progress.step(message["step"], t)
            elif kind == "metrics":
                self._progress.metrics(message)
                if self._trackers is not None:
                    self._trackers.log(message)
