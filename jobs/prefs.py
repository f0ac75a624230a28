"""`batray prefs`: consolidate AI labels (`batray label`) and human labels (`batray annotate export`)
into `preferences.parquet` with d in {-1, 0, 1} (`batray.feedback.prefs`).

    batray prefs [--ai FILE] [--human FILE] [--out DIR] [--dry-run] [prefs.unacceptable_loses=false ...]
"""

from __future__ import annotations

from jobs.common import run_stage_command, stage_parser


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("prefs", "consolidate human and AI labels into d in {-1, 0, 1}")
    p.add_argument("--ai", default=None, help="AI labels (sets prefs.ai_labels)")
    p.add_argument("--human", default=None, help="human labels (sets prefs.human_labels)")
    p.add_argument("--out", default=None, help="output folder (default: <run_dir>/prefs)")
    args = p.parse_args(argv)
    for flag, key in (("ai", "prefs.ai_labels"), ("human", "prefs.human_labels")):
        if getattr(args, flag):
            args.overrides.append(f"{key}={getattr(args, flag)}")
    run_stage_command("prefs", args, out_dir=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
