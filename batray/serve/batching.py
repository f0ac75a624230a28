"""Concurrent requests batched into one generation loop: an asyncio queue feeds a single worker.

Requests arriving within `batch_wait_ms` of each other (up to `max_batch_size` rows) are decoded
together in one batch on a worker thread, so the event loop keeps accepting requests and streaming
tokens meanwhile. Each row's `StepOut`s are posted back to the requesting coroutine's queue with
`call_soon_threadsafe`. Batches are static (a batch runs until all its rows finish); that keeps the
loop simple and is what the transformers backend can do; vLLM batches continuously on its own.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from batray.serve.generation import GenRow, StepOut

log = logging.getLogger(__name__)


@dataclass
class _Pending:
    rows: list[GenRow]


class BatchingEngine:
    def __init__(self, generator, max_batch_size: int = 8, batch_wait_ms: float = 5.0):
        self.generator = generator  # anything with `generate(rows: list[GenRow]) -> None`
        self.max_batch_size = max_batch_size
        self.batch_wait_s = batch_wait_ms / 1000.0
        self.batches_run = 0  # for tests and the log: how many generate() calls served the requests
        self.rows_run = 0
        self._queue: asyncio.Queue[_Pending] | None = None
        self._task: asyncio.Task | None = None
        self._carry: _Pending | None = None

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="batray-generation-loop")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    def submit(self, rows: list[GenRow]) -> asyncio.Queue:
        """Queue `rows`; returns a queue receiving `(row index, StepOut)` until every row finished."""
        loop = asyncio.get_running_loop()
        sink: asyncio.Queue = asyncio.Queue()
        for i, row in enumerate(rows):
            row.emit = lambda out, i=i: loop.call_soon_threadsafe(sink.put_nowait, (i, out))
        self._queue.put_nowait(_Pending(rows))
        return sink

    async def _next_batch(self) -> list[_Pending]:
        first = self._carry or await self._queue.get()
        self._carry = None
        batch, n_rows = [first], len(first.rows)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.batch_wait_s
        while n_rows < self.max_batch_size:
            try:
                remaining = deadline - loop.time()
                item = self._queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(self._queue.get(), remaining)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if n_rows + len(item.rows) > self.max_batch_size:
                self._carry = item  # first in line for the next batch
                break
            batch.append(item)
            n_rows += len(item.rows)
        return batch

    async def _run(self) -> None:
        while True:
            batch = await self._next_batch()
            rows = [r for p in batch for r in p.rows]
            self.batches_run += 1
            self.rows_run += len(rows)
            try:
                await asyncio.to_thread(self.generator.generate, rows)
            except Exception as e:  # a failed batch fails its requests, not the server
                log.exception("generation failed for a batch of %d rows", len(rows))
                for r in rows:
                    r.emit(StepOut("", [], "error", error=f"{type(e).__name__}: {e}"))
