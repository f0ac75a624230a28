"""The loader every stage uses: a source in any recognised layout -> batray's canonical rows.

    conversations, report = load_sft("data/alpaca.json", Keys.of("sft", cfg.sft))
    prompts, report = load_prompts({"name": "org/prompts", "split": "train"})
    rows, report = load_preferences("prefs/")      # batray.reward.data.load_triples wraps this

Every source row is read once on the driver (`batray.data.sources.iter_rows`), normalised by
`batray.data.formats`, and counted: rejected rows keep their reason and `file:line` (or `row i`) in
the `RejectReport`, which `write_rejected` puts aside. `normalized_dataset` gives training stages the
same canonical rows through Ray Data, streamed from the source.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from batray.data.formats import FormatError, Keys, normalize
from batray.data.io import RejectReport, reject, write_rejected
from batray.data.sources import iter_rows, ray_dataset, resolve, source_exists
from batray.errors import DataError

log = logging.getLogger(__name__)


def load_normalized(source, kind: str, keys: Keys | None = None,
                    check: Callable[[dict], str | None] | None = None) -> tuple[list[dict], RejectReport]:
    """Canonical rows of `kind` ('sft', 'preferences', 'prompts') from a source, and what was rejected.

    check: a further test of each canonical row (a reason, or None to keep it).
    """
    report = RejectReport()
    rows: list[dict] = []
    for where, row in iter_rows(resolve(source)):
        report.rows_read += 1
        if "__invalid__" in row:
            report.total += 1
            reject(report, row["__invalid__"], where, row)
            continue
        try:
            result = normalize(kind, row, keys)
        except FormatError as e:
            report.total += 1
            reject(report, str(e), where, row)
            continue
        report.total += len(result.rows) + len(result.errors)
        for err in result.errors:
            reject(report, err, where, row)
        for out in result.rows:
            reason = check(out) if check is not None else None
            if reason is not None:
                reject(report, f"{result.layout}: {reason}", where, row)
                continue
            report.layouts[result.layout] += 1
            rows.append(out)
    return rows, report


def load_sft(source, keys: Keys | None = None) -> tuple[list[list[dict]], RejectReport]:
    """SFT conversations (system?, user, assistant, ..., assistant) from any SFT layout."""
    rows, report = load_normalized(source, "sft", keys)
    return [r["messages"] for r in rows], report


def load_preferences(source, keys: Keys | None = None) -> tuple[list[dict], RejectReport]:
    """Preference rows `{pair_id, context, response_a, response_b, d}` from any preference layout."""
    return load_normalized(source, "preferences", keys)


def _single_turn(row: dict) -> str | None:
    if len(row["messages"]) != 1:
        return f"this stage takes one user turn as the prompt; this one has {len(row['messages'])} messages"
    return None


def load_prompts(source, keys: Keys | None = None, *, single_turn: bool = False) -> tuple[list[dict], RejectReport]:
    """Prompt rows `{messages, prompt, id}` (messages end with the user's turn; prompt is its text).

    single_turn: reject (and count) prompts that are more than one user turn, for stages whose
    output records the prompt as one string.
    """
    return load_normalized(source, "prompts", keys, _single_turn if single_turn else None)


def load_pairs_prompts(cfg, src, out_dir: str) -> list[dict]:
    """The pairs stage's prompts from `src` (resolved by `batray.stages`); rejected rows go to
    `<out_dir>/rejected_prompts.jsonl`, `pairs.max_prompts` caps the rest."""
    from batray.config import join_uri

    if not source_exists(src):
        raise DataError(f"pairs: no prompts at {src}; set pairs.prompts or run `batray data demo`")
    rows, report = load_prompts(src, Keys.of("pairs", cfg.pairs), single_turn=True)
    log.info(report.summary(f"prompts {resolve(src)}"))
    write_rejected(report, join_uri(out_dir, "rejected_prompts.jsonl"))
    if cfg.pairs.max_prompts:
        rows = rows[: cfg.pairs.max_prompts]
    if not rows:
        raise DataError(f"pairs: {resolve(src)} has no usable prompts ({report.summary('prompts')})")
    return rows


class _Normalize:
    """Ray Data's per-row function: canonical rows of a source row; rejected rows yield nothing here
    (the driver's validation pass has counted and reported them)."""

    def __init__(self, kind: str, keys: Keys | None):
        self.kind, self.keys = kind, keys

    def __call__(self, row: dict) -> list[dict]:
        try:
            return normalize(self.kind, row, self.keys).rows
        except FormatError:
            return []


def normalized_dataset(source, kind: str, keys: Keys | None = None):
    """The canonical rows of `kind` as a Ray Data dataset, streamed from the source: the rows
    `load_normalized` accepts (without a stage's `check`), in the source's order within each file."""
    return ray_dataset(resolve(source)).flat_map(_Normalize(kind, keys))
