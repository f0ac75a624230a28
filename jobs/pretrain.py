"""`batray pretrain`: bidirectional autoregressive pretraining (§3.1, Eq. 1) as a Ray Train job.

    batray pretrain --config FILE [--run-dir DIR] [--dry-run] [pretrain.max_steps=200 ...]

Inputs and outputs: `batray.stages` (the `pretrain` entry); the work: `batray.train.pretrain`.
"""

from __future__ import annotations

from jobs.common import run_stage_command, stage_parser


def main(argv: list[str] | None = None) -> int:
    args = stage_parser("pretrain", "bidirectional autoregressive pretraining (§3.1, Eq. 1) on Ray Train").parse_args(argv)
    result = run_stage_command("pretrain", args)
    if result is not None:
        print(f"pretrain: final checkpoint {result.plan.outputs['model']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
