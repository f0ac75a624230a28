"""`batray sft`: instruction tuning (§3.2, Eq. 2) as a Ray Train job, from a pretrained checkpoint.

    batray sft --config FILE [--run-dir DIR] [--dry-run] [sft.init_from=PATH] [sft.loss_on=all ...]

The starting model is `sft.init_from`, else the latest model stage before sft in `stages`, else
`model.path` (`batray.stages`); the work: `batray.train.sft`.
"""

from __future__ import annotations

from jobs.common import run_stage_command, stage_parser


def main(argv: list[str] | None = None) -> int:
    args = stage_parser("sft", "instruction tuning on prompt/response and dialogues (§3.2, Eq. 2)").parse_args(argv)
    result = run_stage_command("sft", args)
    if result is not None:
        print(f"sft: final checkpoint {result.plan.outputs['model']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
