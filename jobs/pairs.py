"""`batray pairs`: two responses A and B per prompt from rollout engines (§3.3).

    batray pairs --config FILE [--model-a CKPT] [--out DIR] [--dry-run] [pairs.model_b=URL ...]

A from `pairs.model_a` (else the latest model stage before pairs: the SFT model); B from `pairs.model_b`
(null: A's model sampled again; a checkpoint; an endpoint URL; `world`). The work: `batray.feedback.pairs`.
"""

from __future__ import annotations

from jobs.common import run_stage_command, stage_parser


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("pairs", "two responses A and B per prompt from rollout engines (§3.3)")
    p.add_argument("--model-a", default=None, help="checkpoint of response A (sets pairs.model_a)")
    p.add_argument("--out", default=None, help="output folder (default: <run_dir>/pairs)")
    args = p.parse_args(argv)
    if args.model_a:
        args.overrides.append(f"pairs.model_a={args.model_a}")
    run_stage_command("pairs", args, out_dir=args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
