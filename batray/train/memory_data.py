"""Training rows the driver already holds (SFT samples, reward triples), handed to Ray Train workers
through the object store instead of a Ray Data pipeline.

`MemoryDataset.from_rows` stacks the rows into numpy columns; a Ray Train launch puts them in Ray's object
store once and each worker maps them read-only (zero-copy), an in-process launch reads them where they are;
either way a worker iterates its contiguous share of the rows in a fixed order. Skipping Ray Data saves
its start-up (the split coordinator actor and executor) and its per-batch prefetch thread in the worker; a stage whose data does not fit in memory (a pretraining
corpus) keeps Ray Data's streaming. The iteration API is the subset of `DataIterator` the loop uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass
class MemoryDataset:
    """Columns of equal length, `num_rows` rows: held here (`columns`) until a Ray Train launch puts them in
    the object store once (`in_object_store`, then `ref`); a stage trained in-process never needs Ray."""

    num_rows: int
    columns: dict | None = None  # dict[str, np.ndarray], in this process
    ref: object = None  # ray.ObjectRef of the same dict, once in the object store

    @classmethod
    def from_rows(cls, rows: list[dict], dtype=None) -> MemoryDataset:
        """`dtype`: the columns' type (e.g. np.int32 for token ids), else numpy's choice."""
        if not rows:
            raise ValueError("a MemoryDataset needs at least one row")
        return cls.from_columns({k: np.asarray([r[k] for r in rows], dtype=dtype) for k in rows[0]})

    @classmethod
    def from_columns(cls, columns: dict) -> MemoryDataset:
        lengths = {len(v) for v in columns.values()}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(f"a MemoryDataset needs columns of one non-zero length, not {sorted(lengths)}")
        return cls(num_rows=lengths.pop(), columns=columns)

    def in_object_store(self) -> MemoryDataset:
        """The same rows by object-store reference: what a Ray Train job carries to its workers (a job pickled
        with the arrays in it would copy them into every worker's task)."""
        import ray

        return self if self.ref is not None else MemoryDataset(num_rows=self.num_rows, ref=ray.put(self.columns))

    def shard(self, rank: int, world: int) -> MemoryShard:
        """Worker `rank` of `world`: rows [rank * m, (rank + 1) * m) with m = num_rows // world, so every
        worker gets the same number of rows (as Ray Train's equal split does)."""
        m = self.num_rows // world
        if self.columns is not None:
            columns = self.columns
        else:
            import ray

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
