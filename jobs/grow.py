"""`batray grow`: Algorithm 1 (progressive stacking) end to end, with an optional width step.

    batray grow --config FILE [--run-dir DIR] [--dry-run] [grow.stack_steps=2 grow.steps_per_phase=200 ...]

The work: `batray.expansion.grow` (phases under `<run_dir>/grow/stage_k/`, `grow/final/`, `loss.png`).
"""

from __future__ import annotations

import json
from pathlib import Path

from batray.expansion.grow import format_summary
from jobs.common import run_stage_command, stage_parser


def main(argv: list[str] | None = None) -> int:
    args = stage_parser("grow", "Algorithm 1: train shallow, stack, train again, until full depth").parse_args(argv)
    result = run_stage_command("grow", args)
    if result is not None:
        out = Path(result.plan.outputs["model"]).parent
        print(format_summary(json.loads((out / "summary.json").read_text())))
        print(f"grow: final checkpoint {result.plan.outputs['model']}, plot {out / 'loss.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
