"""Training rows the driver already holds (SFT samples, reward triples), handed to Ray Train workers
through the object store instead of a Ray Data pipeline.

`MemoryDataset.from_rows` stacks the rows into numpy columns and puts them in Ray's object store once;
each worker maps them read-only (zero-copy) and iterates its contiguous share of the rows in a fixed
order. Skipping Ray Data saves its start-up (the split coordinator actor and executor) and its
per-batch prefetch thread in the worker; a stage whose data does not fit in memory (a pretraining
corpus) keeps Ray Data's streaming. The iteration API is the subset of `DataIterator` the loop uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass
class MemoryDataset:
    """Columns of equal length in the object store (`ref`), `num_rows` rows."""

    ref: object  # ray.ObjectRef of dict[str, np.ndarray]
    num_rows: int

    @classmethod
    def from_rows(cls, rows: list[dict], dtype=None) -> MemoryDataset:
        """`dtype`: the columns' type (e.g. np.int32 for token ids), else numpy's choice."""
        import ray

        if not rows:
            raise ValueError("a MemoryDataset needs at least one row")
        columns = {k: np.asarray([r[k] for r in rows], dtype=dtype) for k in rows[0]}
        return cls(ref=ray.put(columns), num_rows=len(rows))

    def shard(self, rank: int, world: int) -> MemoryShard:
        """Worker `rank` of `world`: rows [rank * m, (rank + 1) * m) with m = num_rows // world, so every
        worker gets the same number of rows (as Ray Train's equal split does)."""
        import ray

        m = self.num_rows // world
        columns = ray.get(self.ref)
        return MemoryShard({k: v[rank * m:(rank + 1) * m] for k, v in columns.items()})


class MemoryShard:
    """One worker's rows; `iter_batches` as `ray.data.DataIterator.iter_batches` (numpy batches)."""

    def __init__(self, columns: dict[str, np.ndarray]):
        self._columns = columns
        self._n = len(next(iter(columns.values())))

    def iter_batches(self, *, batch_size: int, drop_last: bool = False, batch_format: str = "numpy",
                     prefetch_batches: int = 0) -> Iterator[dict[str, np.ndarray]]:
        if batch_format != "numpy":
            raise ValueError(f"MemoryShard yields numpy batches, not {batch_format!r}")
        end = self._n - self._n % batch_size if drop_last else self._n
        for i in range(0, end, batch_size):
            yield {k: v[i:i + batch_size] for k, v in self._columns.items()}
