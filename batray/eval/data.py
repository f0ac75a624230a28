"""Readers of the benchmarks' official CSV layouts (docs/DESIGN.md §3).

- CMMLU: `{root}/{split}/{subject}.csv`, header `,Question,A,B,C,D,Answer` (the first column is an
  index); splits `dev` (the k shots) and `test` (scored).
- C-Eval: `{root}/{split}/{subject}_{split}.csv`, header `id,question,A,B,C,D,answer,explanation`;
  splits `dev`, `val` (scored: test answers are withheld) and `test`.

`root` is the benchmark folder or a folder holding `cmmlu/` and `ceval/`. Cells are kept verbatim
(the official code reads them with pandas, which would turn an all-numeric option column such as
`0.50` into `0.5`; batray keeps what the authors wrote). Rows with a missing question, option or
an answer outside A-D are rejected, counted and reported, never silently dropped.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass

import pyarrow.fs as pafs

from batray.data.io import RejectReport, filesystem
from batray.errors import DataError

LETTERS = ("A", "B", "C", "D")
SCORED_SPLIT = {"cmmlu": "test", "ceval": "val"}
HEADERS = {
    "cmmlu": ["", "Question", "A", "B", "C", "D", "Answer"],
    "ceval": ["id", "question", "A", "B", "C", "D", "answer", "explanation"],
}


@dataclass(frozen=True)
class Item:
    subject: str
    index: int  # position among the file's rows (0-based)
    id: str  # the file's own id / index column
    question: str
    options: tuple[str, str, str, str]
    answer: str  # "A".."D"; "" where withheld (C-Eval test)
    explanation: str = ""  # C-Eval dev: the worked solution used by chain-of-thought shots


def benchmark_root(data_dir: str, benchmark: str) -> str:
    """`data_dir` itself when it holds the splits, else `data_dir/<benchmark>`."""
    fs, path = filesystem(data_dir)
    sub = f"{path.rstrip('/')}/{benchmark}"
    if fs.get_file_info(sub).type == pafs.FileType.Directory:
        return f"{data_dir.rstrip('/')}/{benchmark}"
    if fs.get_file_info(path).type != pafs.FileType.Directory:
        raise DataError(f"{benchmark} data folder {data_dir!r} does not exist")
    return data_dir


def split_path(root: str, benchmark: str, subject: str, split: str) -> str:
    name = f"{subject}.csv" if benchmark == "cmmlu" else f"{subject}_{split}.csv"
    return f"{root.rstrip('/')}/{split}/{name}"


def available_subjects(root: str, benchmark: str, split: str) -> list[str]:
    """Subjects with a file in `split`, sorted."""
    fs, path = filesystem(root)
    folder = f"{path.rstrip('/')}/{split}"
    if fs.get_file_info(folder).type != pafs.FileType.Directory:
        raise DataError(f"{benchmark}: no {split}/ folder under {root!r} (expected the official layout)")
    suffix = ".csv" if benchmark == "cmmlu" else f"_{split}.csv"
    names = [i.base_name for i in fs.get_file_info(pafs.FileSelector(folder)) if i.base_name.endswith(suffix)]
    return sorted(n[: -len(suffix)] for n in names)


def read_split(root: str, benchmark: str, subject: str, split: str, report: RejectReport | None = None,
               require_answer: bool = True) -> list[Item]:
    """The items of one subject's split; bad rows go to `report` (counted, with reasons)."""
    uri = split_path(root, benchmark, subject, split)
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.File:
        raise DataError(f"{benchmark}: missing file {uri}")
    with fs.open_input_stream(path) as f:
        text = f.read().decode("utf-8-sig")
    rows = list(csv.reader(io.StringIO(text)))
    if not rows:
        raise DataError(f"{uri}: empty file (expected the header {','.join(HEADERS[benchmark])})")
    header = [h.strip() for h in rows[0]]
    expected = HEADERS[benchmark]
    if header[: len(expected)] != expected and header[1 : len(expected)] != expected[1:]:
        raise DataError(f"{uri}: header {','.join(header)!r} is not the official {benchmark} layout "
                        f"{','.join(expected)!r}")
    report = report if report is not None else RejectReport()
    items: list[Item] = []
    for i, row in enumerate(rows[1:]):
        if not row:
            continue
        report.total += 1
        reason = _check_row(row, benchmark, require_answer)
        if reason:
            report.rejected.append({"reason": reason, "where": f"{uri}:row {i + 1}", "row": row})
            continue
        if benchmark == "cmmlu":
            rid, question, a, b, c, d, answer = row[:7]
            explanation = ""
        else:
            rid, question, a, b, c, d, answer = row[:7]
            explanation = row[7] if len(row) > 7 else ""
        items.append(Item(subject, len(items), rid, question, (a, b, c, d), answer.strip(), explanation))
    return items


def _check_row(row: list[str], benchmark: str, require_answer: bool) -> str | None:
    need = 7
    if len(row) < need:
        return f"{len(row)} columns, expected {len(HEADERS[benchmark])}"
    if not row[1].strip():
        return "empty question"
    answer = row[6].strip()
    if require_answer and answer not in LETTERS:
        return f"answer {answer!r} is not one of A/B/C/D"
    return None
