"""`batray reward`: the reward model of §3.3, trained with the paper's hinge loss (Eq. 3) on Ray Train.

    batray reward --config FILE [--run-dir DIR] [--dry-run] [reward.tie_loss=band reward.margin=1 ...]

Inputs: `reward.data` (else the prefs stage's output) and `reward.init_from` (else the latest model
stage before reward: the SFT model); the work: `batray.reward.stage`.
"""

from __future__ import annotations

from batray.reward.stage import summary
from jobs.common import run_stage_command, stage_parser


def main(argv: list[str] | None = None) -> int:
    args = stage_parser("reward", "reward model with the paper's hinge loss (Eq. 3) on Ray Train").parse_args(argv)
    result = run_stage_command("reward", args)
    if result is not None:
        print(summary(result.plan.outputs["model"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
