"""Reading with validation, and writers for JSONL and Parquet on local paths or any URI pyarrow opens.

`read_rows` validates a source's rows (see `batray.data.sources`) against a data contract and
returns accepted rows plus a `RejectReport`; `write_rejected` puts bad rows aside with their
reasons. Stages report the counts. Layouts other than the contracts are normalised by
`batray.data.load` (which uses the same report).
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batray.data.schemas import VALIDATORS
from batray.data.sources import data_files, exists, filesystem, iter_rows, ray_dataset, resolve  # noqa: F401
from batray.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class RejectReport:
    """What was read, what was rejected and why: every dropped row is counted.

    `total` counts examples: a source row that yields several (Self-Instruct's instances) counts
    each, and `rows_read` is then the number of source rows; `layouts` counts examples per layout.
    """

    total: int = 0
    rejected: list[dict] = field(default_factory=list)
    rows_read: int = 0
    layouts: Counter = field(default_factory=Counter)

    @property
    def accepted(self) -> int:
        return self.total - len(self.rejected)

    def reasons(self) -> Counter:
        return Counter(r["reason"].split(" (")[0] for r in self.rejected)

    def summary(self, what: str) -> str:
        parts = [f"{self.total} examples"] if self.rows_read and self.rows_read != self.total else []
        if self.layouts:
            parts.append(", ".join(f"{name}: {n}" for name, n in self.layouts.most_common()))
        counted = f"{self.rows_read or self.total} rows" + (f" ({'; '.join(parts)})" if parts else "")
        if not self.rejected:
            return f"{what}: {counted}, all accepted"
        top = "; ".join(f"{n} x {r}" for r, n in self.reasons().most_common(3))
        return f"{what}: {counted}, {self.accepted} accepted, {len(self.rejected)} rejected ({top})"


def read_rows(source, contract: str) -> tuple[list[dict], RejectReport]:
    """Read all rows of a source (a file, folder, URI, save_to_disk folder or hub dataset; a string or
    a mapping) and validate them against `contract`."""
    if contract not in VALIDATORS:
        raise DataError(f"unknown data contract {contract!r}; one of {sorted(VALIDATORS)}")
    check = VALIDATORS[contract]
    rows: list[dict] = []
    report = RejectReport()
    for where, row in iter_rows(resolve(source)):
        report.total += 1
        reason = row.get("__invalid__") or check(row)
        if reason is None:
            rows.append(row)
        else:
            reject(report, reason, where, row)
    return rows, report


def reject(report: RejectReport, reason: str, where: str | None, row: dict) -> None:
    """Count a bad row: its reason, where it was, and the row as read (the line's text when unparsable)."""
    entry = {"reason": reason, "row": row.get("__line__", row) if isinstance(row, dict) else row}
    if where is not None:
        entry["where"] = where
    report.rejected.append(entry)


def drop_duplicate_ids(rows: list[dict], report: RejectReport, key: str = "pair_id") -> list[dict]:
    """Rows whose `key` was already seen are moved to `report.rejected` (counted, never silently lost)."""
    seen: set = set()
    unique = []
    for row in rows:
        if row[key] in seen:
            report.rejected.append({"reason": f"duplicate {key} {row[key]!r}", "row": row})
            continue
        seen.add(row[key])
        unique.append(row)
    return unique


def write_rejected(report: RejectReport, out_uri: str) -> str | None:
    """Write rejected rows with reasons as JSONL; returns the path, or None when nothing was rejected."""
    if not report.rejected:
        return None
    fs, path = filesystem(out_uri)
    fs.create_dir(str(Path(path).parent), recursive=True)
    with fs.open_output_stream(path) as f:
        for r in report.rejected:
            f.write((json.dumps(r, ensure_ascii=False, default=str) + "\n").encode("utf-8"))
    log.warning("wrote %d rejected rows to %s", len(report.rejected), out_uri)
    return out_uri


def write_jsonl(rows: list[dict], uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(str(Path(path).parent), recursive=True)
    with fs.open_output_stream(path) as f:
        for r in rows:
            f.write((json.dumps(r, ensure_ascii=False, default=str) + "\n").encode("utf-8"))


def write_parquet(rows: list[dict] | pa.Table, uri: str, schema: pa.Schema | None = None) -> None:
    """Write rows atomically enough for resumability: to a temp name, then move into place."""
    table = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(rows, schema=schema)
    fs, path = filesystem(uri)
    fs.create_dir(str(Path(path).parent), recursive=True)
    tmp = path + ".tmp"
    with fs.open_output_stream(tmp) as f:
        pq.write_table(table, f)
    fs.move(tmp, path)


def read_parquet(uri: str) -> pa.Table:
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        raise DataError(f"{uri!r} does not exist")
    with fs.open_input_file(path) as f:
        return pq.read_table(f)
