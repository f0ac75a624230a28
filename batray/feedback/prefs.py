"""Consolidation (§3.3; `batray prefs`): AI labels (`batray label`) and human labels (`batray annotate
export`) into `preferences.parquet` with d in {-1, 0, 1}, by the policy in `batray.feedback.consolidate`,
with a summary (counts by source and label, human/AI agreement, ties).
"""

from __future__ import annotations

import logging

from batray.config import RecipeConfig, join_uri
from batray.data.io import exists, read_rows, write_parquet, write_rejected
from batray.data.schemas import PREFERENCES
from batray.errors import BatrayError

log = logging.getLogger("batray.prefs")


def _read_labels(uri: str | None, what: str, out_dir: str) -> list[dict]:
    if uri is None:
        return []
    rows, report = read_rows(uri, "preferences")
    log.info(report.summary(f"{what} labels {uri}"))
    write_rejected(report, join_uri(out_dir, f"rejected_{what}.jsonl"))
    return rows


def run_prefs(cfg: RecipeConfig, out_dir: str, *, ai: str | None, human: str | None) -> str:
    """Write `<out_dir>/preferences.parquet` from AI labels and/or human labels (each optional, at least
    one needed). Returns the path."""
    from batray.feedback.consolidate import Policy, consolidate

    pc = cfg.prefs
    for name, uri in (("ai", ai), ("human", human)):
        if uri is not None and not exists(uri):
            raise BatrayError(f"prefs: {name} labels {uri!r} do not exist")
    if ai is None and human is None:
        raise BatrayError("prefs: no labels; run `batray label` and/or `batray annotate export`, or set "
                          "prefs.ai_labels / prefs.human_labels (--ai/--human)")
    ai_rows, human_rows = _read_labels(ai, "ai", out_dir), _read_labels(human, "human", out_dir)
    policy = Policy(unacceptable_loses=pc.unacceptable_loses, human_overrides_ai=pc.human_overrides_ai,
                    min_confidence=pc.min_confidence)
    rows, summary = consolidate(ai_rows, human_rows, policy)
    if not rows:
        raise BatrayError("prefs: every label was dropped (see prefs.min_confidence); nothing to write")
    out = join_uri(out_dir, "preferences.parquet")
    write_parquet(rows, out, PREFERENCES)
    print(f"prefs: wrote {len(rows)} preferences to {out}")
    for line in summary.lines():
        print("  " + line)
    return out
