"""Where rows come from: local or remote files and folders, `save_to_disk` folders, hub datasets.

One source spec (`batray.config.sources.DataSpec`: a string or a mapping) resolves to a `Source`,
read two ways that yield the same rows:

- `iter_rows`: the driver's validation pass, every row with where it came from (`file:line` for
  JSON lines and CSV, `file:row i` for Parquet and JSON arrays) so a bad row can be reported;
- `ray_dataset`: the same rows as a Ray Data dataset for training stages, streamed from the files
  (`read_parquet`, `read_csv`, JSON through the validation pass's own parser) or, for `datasets`
  objects, `from_huggingface` / `from_arrow`.

Files: `.jsonl`/`.ndjson`/`.json` (JSON lines or one JSON array), `.parquet`, `.csv`, each optionally
compressed (`.gz`, `.bz2`, `.zst`); a folder is every such file under it (hidden and `_` names
skipped). A folder that `datasets.save_to_disk` wrote is read with `datasets.load_from_disk`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batray.errors import DataError
from batray.models.hub import HUB_ID

FORMATS = {"json": (".jsonl", ".ndjson", ".json"), "parquet": (".parquet",), "csv": (".csv",)}
COMPRESSIONS = ("", ".gz", ".bz2", ".zst")
# `owner/name` with no local file or folder of that name is a hub dataset id (a bare `name` is not,
# so a missing local folder is not looked up on the hub; write `{name: imdb}` for those).
_BATCH = 1024


@dataclass(frozen=True)
class Source:
    """A resolved data source: `path` (local or URI) or `name` (hub id, or a local hub-layout folder)."""

    path: str | None = None
    name: str | None = None
    config: str | None = None
    split: str | None = None

    @property
    def label(self) -> str:
        base = self.path or f"hub:{self.name}" + (f"/{self.config}" if self.config else "")
        return base + (f"[{self.split}]" if self.split else "")

    def __str__(self) -> str:
        return self.label


def resolve(spec) -> Source:
    """A config value (`str` or mapping) or a `Source` as a `Source`."""
    if isinstance(spec, Source):
        return spec
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if isinstance(spec, dict):
        from batray.config.sources import check_source

        try:
            return Source(**check_source(spec))
        except (ValueError, TypeError) as e:
            raise DataError(f"data source {spec!r}: {e}") from None
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(f"data source {spec!r}: expected a path, URI or hub dataset id")
    if "://" in spec or os.path.exists(spec) or not HUB_ID.fullmatch(spec) or data_format(spec):
        return Source(path=spec)
    return Source(name=spec)


def data_format(path: str) -> str | None:
    """'json', 'parquet' or 'csv' from a file name (compression suffixes allowed), else None."""
    name = PurePosixPath(path).name.lower()
    for fmt, exts in FORMATS.items():
        if any(name.endswith(ext + comp) for ext in exts for comp in COMPRESSIONS):
            return fmt
    return None


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or a URI such as s3://bucket/key."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), str(Path(uri).absolute())
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"cannot open {uri!r}: {e}") from None


def exists(uri: str) -> bool:
    """Whether a local path or URI exists (a path, not a source spec: see `source_exists`)."""
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def source_exists(spec) -> bool:
    """False only for a path source that is not there; a hub id is only known once it is loaded."""
    src = resolve(spec)
    return src.name is not None or exists(src.path)


def _is_hidden(rel: str) -> bool:
    return any(part.startswith((".", "_")) for part in PurePosixPath(rel).parts)


def data_files(uri: str) -> list[tuple[pafs.FileSystem, str]]:
    """The data files of a file or folder (recursively, sorted; hidden and `_` names skipped)."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"data path {uri!r} does not exist")
    if info.type != pafs.FileType.Directory:
        return [(fs, path)]
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
    files = sorted(i.path for i in infos if i.type == pafs.FileType.File and data_format(i.path)
                   and not _is_hidden(os.path.relpath(i.path, path)))
    if not files:
        raise DataError(f"data folder {uri!r} has no .jsonl/.json/.parquet/.csv files")
    return [(fs, f) for f in files]


def saved_dataset_kind(uri: str) -> str | None:
    """'dict' or 'dataset' for a folder `datasets.save_to_disk` wrote, else None."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        return None
    if fs.get_file_info(f"{path}/dataset_dict.json").type == pafs.FileType.File:
        return "dict"
    names = ("state.json", "dataset_info.json")
    if all(fs.get_file_info(f"{path}/{n}").type == pafs.FileType.File for n in names):
        return "dataset"
    return None


# ---- `datasets` objects: save_to_disk folders and hub datasets ----------------------------------------


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("reading save_to_disk folders and hub datasets needs the `datasets` package "
                        "(pip install datasets)") from None
    return datasets


def _pick_split(dd, src: Source):
    splits = list(dd.keys())
    split = src.split or ("train" if "train" in splits else splits[0] if len(splits) == 1 else None)
    if split not in splits:
        raise DataError(f"{src.label}: split {split!r} not in {splits}; name one with split: ..."
                        if split else f"{src.label}: several splits {splits}; name one with split: ...")
    return dd[split]


def load_hf_dataset(src: Source):
    """The `datasets.Dataset` of a save_to_disk folder or a hub dataset (split `train` unless named)."""
    datasets = _datasets()
    if src.path is not None and saved_dataset_kind(src.path):
        try:
            ds = datasets.load_from_disk(src.path)
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds; one line for the user
            raise DataError(f"{src.label}: cannot read the save_to_disk folder ({type(e).__name__}: {e})") from None
        if isinstance(ds, datasets.DatasetDict):
            return _pick_split(ds, src)
        if src.split:
            raise DataError(f"{src.label}: a single-split save_to_disk folder; drop split")
        return ds
    # hub ids, and local folders laid out like a hub dataset repo (README configs, train/test files)
    if src.path is not None and not os.path.isdir(src.path):
        raise DataError(f"{src.label}: split names a split of a folder (train/test files, README configs) or a "
                        "save_to_disk folder; a single file has none, drop split")
    target = src.name if src.name is not None else src.path
    try:
        return datasets.load_dataset(target, src.config, split=src.split or "train")
    except Exception as e:  # noqa: BLE001
        msg = " ".join(str(e).split())[:300]
        where = "" if src.name is None or os.path.exists(src.name) else " (not a local path either)"
        raise DataError(f"{src.label}: datasets.load_dataset failed{where}: {type(e).__name__}: {msg}") from None


def _uses_datasets(src: Source) -> bool:
    return src.name is not None or src.split is not None or saved_dataset_kind(src.path) is not None


def _dataset_rows(ds, label: str) -> Iterator[tuple[str, dict]]:
    i = 0
    for batch in ds.with_format("arrow").iter(batch_size=_BATCH):
        for row in batch.to_pylist():
            yield f"{label}:row {i}", row
            i += 1


# ---- files -------------------------------------------------------------------------------------------


def _read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    # pyarrow decompresses by extension (.gz, .bz2, .zst ...); a corrupt archive fails on read.
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except OSError as e:
        raise DataError(f"{path}: cannot read or decompress ({e})") from None


def json_rows(raw: bytes, path: str) -> Iterator[tuple[str, dict]]:
    """(where, row) for a JSON-lines file or a file holding one JSON array; bad lines/items come as rows
    with `__invalid__` (and `__line__`, the text), so they are counted and written aside."""
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark
        raw = raw[3:]
    if raw.lstrip()[:1] == b"[":
        try:
            items = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            items = None  # not one JSON array: read as JSON lines, so every bad line is reported with its text
        if isinstance(items, list):
            for i, obj in enumerate(items):
                yield f"{path}:row {i}", obj if isinstance(obj, dict) else {
                    "__invalid__": "not a JSON object", "__line__": json.dumps(obj, ensure_ascii=False)[:1000]}
            return
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


def skip_invalid_csv_row(row) -> str:
    """pyarrow's invalid-row handler for the Ray pass: the validation pass has reported the row."""
    return "skip"


def _record_lines(raw: bytes) -> list[int]:
    """The physical line each non-empty CSV record starts on (the header first): quoted fields may
    span lines, so record numbers and line numbers differ."""
    reader = csv.reader(io.StringIO(raw.decode("utf-8", "replace"), newline=""))
    starts, prev = [], 0
    for record in reader:
        if record:
            starts.append(prev + 1)
        prev = reader.line_num
    return starts


def _csv_rows(fs: pafs.FileSystem, path: str) -> Iterator[tuple[str, dict]]:
    """(where, row) with `where` the row's line; rows with the wrong number of fields come as invalid."""
    raw = _read_bytes(fs, path)
    bad: dict[int, object] = {}

    def collect(row) -> str:
        bad[row.number] = row
        return "skip"

    try:
        table = pacsv.read_csv(pa.BufferReader(raw), read_options=pacsv.ReadOptions(use_threads=False),
                               parse_options=pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=collect))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable CSV file ({e})") from None
    lines = _record_lines(raw)
    records = 1 + table.num_rows + len(bad)  # pyarrow numbers records from 1, the header
    exact = len(lines) == records  # else the two parsers disagree on where records start: name the record
    good = iter(table.to_pylist())
    for number in range(2, records + 1):
        where = f"{path}:{lines[number - 1]}" if exact else f"{path}:record {number}"
        if number in bad:
            row = bad[number]
            yield where, {"__invalid__": f"CSV row with {row.actual_columns} fields, expected {row.expected_columns}",
                          "__line__": row.text}
        else:
            yield where, next(good)


def _parquet_rows(fs: pafs.FileSystem, path: str) -> Iterator[tuple[str, dict]]:
    try:
        f = pq.ParquetFile(fs.open_input_file(path))
    except (pa.ArrowInvalid, OSError) as e:
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    i = 0
    for batch in f.iter_batches(batch_size=_BATCH):
        for row in batch.to_pylist():
            yield f"{path}:row {i}", row
            i += 1


def file_rows(fs: pafs.FileSystem, path: str) -> Iterator[tuple[str, dict]]:
    fmt = data_format(path) or "json"  # a file named explicitly is read as JSON unless its name says more
    if fmt == "parquet":
        return _parquet_rows(fs, path)
    if fmt == "csv":
        return _csv_rows(fs, path)
    return json_rows(_read_bytes(fs, path), path)


def iter_rows(spec) -> Iterator[tuple[str, dict]]:
    """(where, row) for every row of a source: the driver's validation pass."""
    src = resolve(spec)
    if _uses_datasets(src):
        yield from _dataset_rows(load_hf_dataset(src), src.label)
        return
    for fs, path in data_files(src.path):
        yield from file_rows(fs, path)


# ---- Ray Data ----------------------------------------------------------------------------------------


def _json_file_rows(item: dict) -> list[dict]:
    return [row for _, row in json_rows(item["bytes"], item["path"]) if "__invalid__" not in row]


def ray_dataset(spec):
    """A Ray Data dataset over a source's rows: the rows `iter_rows` accepts as JSON objects, in files
    read by Ray's tasks (never loaded by the driver whole), or a `datasets` object handed to Ray.

    JSON goes through the validation pass's parser (`read_binary_files` + that parser) rather than
    `read_json`, which aborts the whole read on one malformed line the validation pass has already
    counted and written aside; CSV rows with the wrong field count are skipped for the same reason.
    Different formats in one folder are read by their own readers and joined with `union`.
    """
    import ray.data

    src = resolve(spec)
    if _uses_datasets(src):
        ds = load_hf_dataset(src)
        if src.name is not None and not os.path.exists(src.name):
            return ray.data.from_huggingface(ds)  # a hub dataset: Ray may read its parquet files directly
        # local datasets: the same table from_huggingface falls back to, without its hub look-up
        return ray.data.from_arrow(ds.with_format("arrow")[:])
    groups: dict[str, list[str]] = {}
    for _, path in data_files(src.path):
        if "://" in src.path:
            path = f"{src.path.split('://', 1)[0]}://{path}"
        groups.setdefault(data_format(path) or "json", []).append(path)
    parts = []  # partitioning=None: `key=value` folder names are not columns here, as in `iter_rows`
    if "parquet" in groups:
        parts.append(ray.data.read_parquet(groups["parquet"], partitioning=None, file_extensions=None))
    if "csv" in groups:
        parts.append(ray.data.read_csv(groups["csv"], partitioning=None, file_extensions=None,
                                       parse_options=pacsv.ParseOptions(newlines_in_values=True,
                                                                        invalid_row_handler=skip_invalid_csv_row)))
    if "json" in groups:
        parts.append(ray.data.read_binary_files(groups["json"], include_paths=True, file_extensions=None)
                     .flat_map(_json_file_rows))
    return parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
