"""Concurrent requests batched into one generation loop, fairly, within bounded memory.

Each request's rows (prompts x n) wait in a round-robin queue; every engine batch takes one row
from each waiting request in turn until it holds `max_batch_size` rows, so a large request is split
over many batches and a small request that arrives meanwhile rides in the next one instead of
waiting for the large one to end. Rows arriving within `batch_wait_ms` of each other are decoded
together on a worker thread, so the event loop keeps accepting requests and streaming tokens.
Each row's `StepOut`s are posted back to the requesting coroutine's queue with
`call_soon_threadsafe`. Batches are static (a batch runs until its rows finish or are cancelled;
finished rows leave it); vLLM batches continuously on its own.

Bounds: at most `max_queued_rows` rows wait (a request that would pass it gets `QueueFull`, the
server's 429 with a Retry-After estimated from recent batch times); a cancelled request (its client
went away) leaves the queue and its running rows leave their batch; `shutdown()` answers every
queued and running request with an error (503) and refuses new ones.

Isolation: a row whose own settings fail is answered with an error alone (the generator checks each
row before the batch runs); if a whole batch fails before any row produced output, each request in
it is run again on its own, so only the request that caused the failure fails.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from dataclasses import dataclass

from batray.serve.generation import GenRow, StepOut

log = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds `max_queued_rows` rows already; retry after `retry_after_s` seconds."""

    def __init__(self, queued: int, limit: int, retry_after_s: int):
        super().__init__(f"the server is busy: {queued} rows are queued (limit {limit}); retry in {retry_after_s} s")
        self.retry_after_s = retry_after_s


class EngineStopped(Exception):
    """The server is shutting down and takes no new requests."""


@dataclass(eq=False)
class Submission:
    """One request's rows on their way through the engine; `sink` receives `(row index, StepOut)`."""

    rows: list[GenRow]
    sink: asyncio.Queue
    handed: int = 0  # rows given to batches so far (they leave the queue in order)
    cancelled: bool = False

    @property
    def waiting(self) -> int:
        return 0 if self.cancelled else len(self.rows) - self.handed


class BatchingEngine:
    def __init__(self, generator, max_batch_size: int = 8, batch_wait_ms: float = 5.0, max_queued_rows: int = 1024):
        self.generator = generator  # anything with `generate(rows: list[GenRow]) -> None`
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.max_queued_rows = max_queued_rows
        self.batches_run = 0  # for tests and the log: how many generate() calls served the requests
        self.rows_run = 0
        self.rows_cancelled = 0  # rows of requests whose client went away
        self._pending: deque[Submission] = deque()  # round-robin order
        self._running: list[tuple[Submission, GenRow]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._stopping = False
        self._batch_s = 1.0  # moving average of a batch's duration (Retry-After)

    # ---- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        self._wakeup = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batray-generation-loop")

    def shutdown(self, message: str = "the server is shutting down; retry on another replica or later") -> int:
        """Refuse new requests and answer every queued and running one with a 503 error.

        The running batch's rows are cancelled, so the worker thread stops at its next step.
        Returns how many requests were answered. Call from the event loop.
        """
        self._stopping = True
        subs = {id(s): s for s in self._pending} | {id(s): s for s, _ in self._running}
        for s in subs.values():
            self._cancel_rows(s)
            s.sink.put_nowait((0, StepOut("", [], "error", error=message, num_tokens=0, status=503)))
        self._pending.clear()
        if self._wakeup is not None:
            self._wakeup.set()
        return len(subs)

    async def stop(self) -> None:
        self.shutdown()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    # ---- requests ---------------------------------------------------------------------------

    @property
    def queued_rows(self) -> int:
        return sum(s.waiting for s in self._pending)

    @property
    def running_rows(self) -> int:
        return sum(1 for _, r in self._running if not r.cancelled and not r.done)

    def retry_after_s(self) -> int:
        """Seconds until the queue has likely drained by one batch's worth (at least 1)."""
        batches = max(1, math.ceil(self.queued_rows / self.max_batch_size))
        return max(1, math.ceil(self._batch_s * min(batches, 60)))

    def submit(self, rows: list[GenRow]) -> Submission:
        """Queue `rows` (raises `QueueFull` or `EngineStopped`); the submission's sink gets their outputs."""
        if self._stopping:
            raise EngineStopped("the server is shutting down")
        queued = self.queued_rows
        if queued + len(rows) > self.max_queued_rows:
            raise QueueFull(queued, self.max_queued_rows, self.retry_after_s())
        loop = asyncio.get_running_loop()
        sub = Submission(rows, asyncio.Queue())

        def post(item):
            try:
                loop.call_soon_threadsafe(sub.sink.put_nowait, item)
            except RuntimeError:  # the loop closed (shutdown): nobody is listening any more
                pass

        for i, row in enumerate(rows):
            def emit(out: StepOut, i=i, row=row):
                row.started = True
                if out.finish_reason:
                    row.done = True
                post((i, out))

            row.emit = emit
        self._pending.append(sub)
        self._wakeup.set()
        return sub

    def cancel(self, sub: Submission) -> None:
        """The client went away: its queued rows leave the queue, its running rows their batch."""
        if sub.cancelled:
            return
        self.rows_cancelled += sum(1 for r in sub.rows if not r.done)
        self._cancel_rows(sub)
        try:
            self._pending.remove(sub)
        except ValueError:
            pass

    @staticmethod
    def _cancel_rows(sub: Submission) -> None:
        sub.cancelled = True
        for r in sub.rows:
            r.cancelled = True

    # ---- the loop ---------------------------------------------------------------------------

    async def _next_batch(self) -> list[tuple[Submission, GenRow]]:
        loop = asyncio.get_running_loop()
        while not self.queued_rows:
            self._wakeup.clear()
            await self._wakeup.wait()
        # give concurrent arrivals `batch_wait_s` to join, unless a full batch is already waiting
        deadline = loop.time() + self.batch_wait_s
        while self.queued_rows < self.max_batch_size and (remaining := deadline - loop.time()) > 0:
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), remaining)
            except TimeoutError:
                break
        batch: list[tuple[Submission, GenRow]] = []
        while len(batch) < self.max_batch_size and self._pending:
            sub = self._pending.popleft()
            if sub.cancelled:
                continue
            batch.append((sub, sub.rows[sub.handed]))
            sub.handed += 1
            if sub.handed < len(sub.rows):
                self._pending.append(sub)  # back of the line: the next request gets the next row
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            self.batches_run += 1
            self.rows_run += len(batch)
            self._running = batch
            start = time.monotonic()
            try:
                await asyncio.to_thread(self._generate_isolated, batch)
            finally:
                self._running = []
            self._batch_s = 0.7 * self._batch_s + 0.3 * (time.monotonic() - start)

    def _generate_isolated(self, batch: list[tuple[Submission, GenRow]]) -> None:
        """Run one batch (worker thread); a failure fails only the request that caused it, if it can tell."""
        rows = [r for _, r in batch]
        try:
            self.generator.generate(rows)
            return
        except Exception as e:  # noqa: BLE001 - reported to the requests below
            error = e
        owners = list({id(s): s for s, _ in batch}.values())
        if len(owners) > 1 and not any(r.started for r in rows):
            log.warning("a batch of %d rows failed (%s: %s); running its %d requests one by one",
                        len(rows), type(error).__name__, error, len(owners))
            for sub in owners:
                mine = [r for s, r in batch if s is sub]
                try:
                    self.generator.generate(mine)
                except Exception as e:  # noqa: BLE001
                    self._fail(mine, e)
            return
        self._fail(rows, error)

    @staticmethod
    def _fail(rows: list[GenRow], error: Exception) -> None:
        log.error("generation failed for %d rows: %s: %s", len(rows), type(error).__name__, error, exc_info=error)
        for r in rows:
            if not r.done:
                r.emit(StepOut("", [], "error", error=f"{type(error).__name__}: {error}", num_tokens=0))
