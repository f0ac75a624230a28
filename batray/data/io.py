"""Readers and writers for JSONL and Parquet on local paths or any URI pyarrow's filesystems open.

`read_rows` validates against a docs/DESIGN.md §3 contract and returns accepted rows plus a
`RejectReport`; `write_rejected` puts bad rows aside with their reasons. Stages report the counts.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batray.data.schemas import VALIDATORS
from batray.errors import DataError

log = logging.getLogger(__name__)


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI such as s3://bucket/key."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).absolute())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"cannot open {uri!r}: {e}") from None


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def _data_files(uri: str) -> list[tuple[pafs.FileSystem, str]]:
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"data path {uri!r} does not exist")
    if info.type == pafs.FileType.Directory:
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
        files = sorted(i.path for i in infos if i.type == pafs.FileType.File and _is_data(i.path))
        if not files:
            raise DataError(f"data folder {uri!r} has no .jsonl/.json/.parquet files")
        return [(fs, f) for f in files]
    return [(fs, path)]


def _is_data(path: str) -> bool:
    return path.endswith((".jsonl", ".json", ".jsonl.gz", ".parquet"))


def _read_file(fs: pafs.FileSystem, path: str) -> Iterator[tuple[str, dict]]:
    """(where, row) for every row of one file; unreadable lines come as rows with `__invalid__`."""
    if path.endswith(".parquet"):
        try:
            with fs.open_input_file(path) as f:
                table = pq.read_table(f)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({e})") from None
        for i, row in enumerate(table.to_pylist()):
            yield f"{path}:row {i}", row
        return
    # pyarrow decompresses by extension (.gz, .bz2, .zst ...); a corrupt archive fails on read.
    try:
        with fs.open_input_stream(path) as f:
            raw = f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read or decompress ({e})") from None
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
        raw = raw[3:]
    for lineno, bline in enumerate(raw.split(b"\n"), 1):
        where = f"{path}:{lineno}"
        try:
            line = bline.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError:
            yield where, {"__invalid__": "invalid UTF-8", "__line__": bline.decode("utf-8", "replace")}
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            yield where, {"__invalid__": f"invalid JSON ({e.msg})", "__line__": line}
            continue
        yield where, (obj if isinstance(obj, dict) else {"__invalid__": "not a JSON object", "__line__": line})


@dataclass
class RejectReport:
    """What was read, what was rejected and why: every dropped row is counted."""

    total: int = 0
    rejected: list[dict] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.total - len(self.rejected)

    def reasons(self) -> Counter:
        return Counter(r["reason"].split(" (")[0] for r in self.rejected)

    def summary(self, what: str) -> str:
        if not self.rejected:
            return f"{what}: {self.total} rows, all accepted"
        top = "; ".join(f"{n} x {r}" for r, n in self.reasons().most_common(3))
        return f"{what}: {self.total} rows, {self.accepted} accepted, {len(self.rejected)} rejected ({top})"


def read_rows(uri: str, contract: str) -> tuple[list[dict], RejectReport]:
    """Read all rows of `uri` (a file or folder) and validate them against `contract`."""
    if contract not in VALIDATORS:
        raise DataError(f"unknown data contract {contract!r}; one of {sorted(VALIDATORS)}")
    check = VALIDATORS[contract]
    rows: list[dict] = []
    report = RejectReport()
    for fs, path in _data_files(uri):
        for where, row in _read_file(fs, path):
            report.total += 1
            reason = row.get("__invalid__") or check(row)
            if reason is None:
                rows.append(row)
            else:
                report.rejected.append({"reason": reason, "where": where, "row": row.get("__line__", row)})
    return rows, report


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


def ray_dataset(uri: str):
    """A Ray Data dataset over JSONL or Parquet files (streamed, never loaded by one worker whole)."""
    import ray.data

    files = _data_files(uri)
    paths = [p for _, p in files]
    if "://" in uri:
        scheme = uri.split("://", 1)[0]
        paths = [f"{scheme}://{p}" for p in paths]
    if all(p.endswith(".parquet") for p in paths):
        return ray.data.read_parquet(paths)
    if all(p.endswith((".jsonl", ".json", ".jsonl.gz")) for p in paths):
        return ray.data.read_json(paths, lines=True) if _supports_lines() else ray.data.read_json(paths)
    raise DataError(f"{uri!r}: mix of parquet and json files; use one format per dataset")


def _supports_lines() -> bool:
    import inspect

    import ray.data

    return "lines" in inspect.signature(ray.data.read_json).parameters
