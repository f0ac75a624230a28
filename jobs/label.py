"""`batray label`: AI feedback (§3.3). Labeler actors ask judges on OpenAI-compatible endpoints.

    batray label --pairs FILE --endpoint URL --model NAME --out DIR [--concurrency N] [--api-key-env VAR]
    batray label -c recipe.yaml            # label.endpoints: several judges, each a rater

`--pairs` sets `label.pairs` (else the pairs stage's output); `--endpoint/--model` replace
`label.endpoints`; with no endpoint at all, `label.local_judge` serves one on 127.0.0.1. API keys are
read from the env var each endpoint's `api_key_env` names and are never logged or written. The work:
`batray.feedback.ai_labels`.
"""

from __future__ import annotations

from batray.config import EndpointConfig
from batray.errors import BatrayError
from jobs.common import resolve, run_stage_command, stage_parser


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("label", "AI feedback: judges on OpenAI-compatible endpoints label pairs (§3.3)")
    p.add_argument("--pairs", default=None, help="pairs parquet/jsonl (sets label.pairs)")
    p.add_argument("--endpoint", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", default=None, help="the judge model name at the endpoint")
    p.add_argument("--out", default=None, help="output folder (default: <run_dir>/label)")
    p.add_argument("--concurrency", type=int, default=None, help="requests in flight per endpoint")
    p.add_argument("--api-key-env", default=None, help="env var holding the endpoint's key (default OPENAI_API_KEY)")
    args = p.parse_args(argv)
    if args.pairs:
        args.overrides.append(f"label.pairs={args.pairs}")
    cfg = resolve(args)
    endpoints = cfg.label.endpoints
    if args.endpoint or args.model:
        if not (args.endpoint and args.model):
            raise BatrayError("label: --endpoint and --model go together")
        ep = dict(url=args.endpoint, model=args.model)
        if args.api_key_env is not None:
            ep["api_key_env"] = args.api_key_env
        endpoints = [EndpointConfig(**ep)]
    if args.concurrency is not None:
        if args.concurrency < 1:
            raise BatrayError("label: --concurrency must be at least 1")
        endpoints = [e.model_copy(update={"concurrency": args.concurrency}) for e in endpoints]
    cfg = cfg.model_copy(update={"label": cfg.label.model_copy(update={"endpoints": endpoints})})
    run_stage_command("label", args, out_dir=args.out, cfg=cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
