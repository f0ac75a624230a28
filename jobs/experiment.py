"""`batray experiment NAME`: rerunnable experiments that make one of the paper's claims measurable.

    batray experiment reversal [--config FILE] [--run-dir DIR] [--steps N] [key.sub=value ...]
    batray experiment hallucination [--pretrain-steps N] [--sft-steps N] [--n N] [--weight W] [--limit Q] ...

reversal: the reversal curse, left-to-right-only vs Eq. 1 pretraining (`batray.experiments.reversal`).
hallucination: plain decoding vs bidirectional reranking on held-out and unseen facts, for an Eq. 1 model
and a left-to-right-only one (`batray.experiments.hallucination`).
"""

from __future__ import annotations

from collections.abc import Callable

from batray.errors import BatrayError
from batray.experiments.hallucination import DEFAULTS as HALLUCINATION_DEFAULTS
from batray.experiments.hallucination import run_hallucination
from batray.experiments.reversal import REVERSAL_DEFAULTS, format_reversal, run_reversal
from jobs.common import resolve, setup_logging, stage_parser


def reversal(argv: list[str] | None = None) -> int:
    parser = stage_parser("experiment reversal", "the reversal curse: l2r-only vs bidirectional (Eq. 1) pretraining")
    parser.add_argument("--steps", type=int, default=300, help="training steps of each model")
    args = parser.parse_args(argv)
    args.overrides = REVERSAL_DEFAULTS + list(args.overrides or [])
    setup_logging()
    cfg = resolve(args)
    results = run_reversal(cfg, steps=args.steps)
    print(format_reversal(results))
    return 0


def hallucination(argv: list[str] | None = None) -> int:
    parser = stage_parser("experiment hallucination",
                          "held-out/unseen fact questions: plain decoding vs bidirectional reranking, "
                          "for an Eq. 1 model and a left-to-right-only one")
    parser.add_argument("--pretrain-steps", type=int, default=300, help="pretraining steps of each model")
    parser.add_argument("--sft-steps", type=int, default=150, help="instruction-tuning steps of each model")
    parser.add_argument("--n", type=int, default=None, help="candidates per question (default: eval.rerank.n)")
    parser.add_argument("--weight", type=float, default=None, help="backward share (default: eval.rerank.weight)")
    parser.add_argument("--limit", type=int, default=None, help="at most this many questions (default: all)")
    args = parser.parse_args(argv)
    user = list(args.overrides or [])
    # the step counts are the stages' max_steps; warm up over at most a tenth of them
    steps = [f"{stage}.{key}" for stage, n in (("pretrain", args.pretrain_steps), ("sft", args.sft_steps))
             for key in (f"max_steps={n}", f"optim.warmup_steps={min(10, n // 10)}")]
    args.overrides = HALLUCINATION_DEFAULTS + steps + user  # the command line's key=value wins
    if args.n is not None:
        args.overrides.append(f"eval.rerank.n={args.n}")
    if args.weight is not None:
        args.overrides.append(f"eval.rerank.weight={args.weight}")
    from batray.errors import BatrayError

    for flag in ("pretrain_steps", "sft_steps", "limit"):
        value = getattr(args, flag)
        if value is not None and value < 1:
            raise BatrayError(f"--{flag.replace('_', '-')} must be >= 1 (got {value})")
    setup_logging()
    cfg = resolve(args)
    results = run_hallucination(cfg, pretrain_steps=args.pretrain_steps, sft_steps=args.sft_steps, limit=args.limit)
    print(results["summary"])
    print(results["table"])
    return 0


EXPERIMENTS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "reversal": (reversal, "the reversal curse: l2r-only vs bidirectional pretraining on one-directional facts"),
    "hallucination": (hallucination, "held-out/unseen fact questions: plain decoding vs bidirectional reranking"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(argv or [])
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: batray experiment NAME [options]\n\nexperiments:")
        for name, (_, text) in EXPERIMENTS.items():
            print(f"  {name:<14}{text}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in EXPERIMENTS:
        raise BatrayError(f"unknown experiment {name!r}; known: {', '.join(EXPERIMENTS)}")
    return EXPERIMENTS[name][0](rest)


if __name__ == "__main__":
    raise SystemExit(main())
