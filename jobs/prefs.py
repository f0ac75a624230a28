"""`batray prefs`: consolidate AI labels (`batray label`) and human labels (`batray annotate export`)
into `preferences.parquet` with d in {-1, 0, 1}, by the policy in `batray.feedback.consolidate`,
and print a summary (counts by source and label, human/AI agreement, ties).

    batray prefs [--ai FILE] [--human FILE] [--out DIR] [prefs.unacceptable_loses=false ...]
"""

from __future__ import annotations

import logging

from batray.config import RecipeConfig, join_uri
from batray.data.io import exists, read_rows, write_parquet, write_rejected
from batray.data.schemas import PREFERENCES
from batray.errors import BatrayError
from jobs.common import resolve, setup_logging, stage_parser

log = logging.getLogger("batray.prefs")


def _read_labels(uri: str | None, what: str, out_dir: str) -> list[dict]:
    if uri is None:
        return []
    rows, report = read_rows(uri, "preferences")
    log.info(report.summary(f"{what} labels {uri}"))
    write_rejected(report, join_uri(out_dir, f"rejected_{what}.jsonl"))
    return rows


def run_prefs(cfg: RecipeConfig, out_dir: str, *, ai: str | None = None, human: str | None = None) -> str:
    """Write `<out_dir>/preferences.parquet`; `ai`/`human` default to the run's label and annotate outputs
    (each optional, at least one needed). Returns the path."""
    from batray.feedback.consolidate import Policy, consolidate

    pc = cfg.prefs
    ai = ai or pc.ai_labels or _if_exists(join_uri(cfg.run_dir, "label", "ai.parquet"))
    human = human or pc.human_labels or _if_exists(join_uri(cfg.run_dir, "annotate", "human.parquet"))
    for name, uri in (("ai", ai), ("human", human)):
        if uri is not None and not exists(uri):
            raise BatrayError(f"prefs: {name} labels {uri!r} do not exist")
    if ai is None and human is None:
        raise BatrayError("prefs: no labels; run `batray label` and/or `batray annotate export`, or pass --ai/--human")
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


def _if_exists(uri: str) -> str | None:
    return uri if exists(uri) else None


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("prefs", "consolidate human and AI labels into d in {-1, 0, 1}")
    p.add_argument("--ai", default=None, help="AI labels (default: prefs.ai_labels or <run_dir>/label/ai.parquet)")
    p.add_argument("--human", default=None, help="human labels (default: prefs.human_labels or <run_dir>/annotate/human.parquet)")
    p.add_argument("--out", default=None, help="output folder (default: <run_dir>/prefs)")
    args = p.parse_args(argv)
    cfg = resolve(args)
    setup_logging()
    run_prefs(cfg, args.out or cfg.stage_dir("prefs"), ai=args.ai, human=args.human)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
