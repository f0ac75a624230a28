"""`batray eval`: CMMLU / C-Eval in the paper's tables (§4, Tables 1-3), scored on Ray actors.

    batray eval --benchmark cmmlu|ceval --data DIR --model PATH_OR_URL --shots K --mode da|cot
                [--subjects a,b] [--limit N] --out DIR
    batray eval compare RUN_DIR...            # runs side by side (Table 1/3 rows per model, Table 2)
    batray eval [--config FILE] [--dry-run] [key=value]   # the recipe's eval stage: benchmarks x shots x modes x models

The work: `batray.eval.run`; the recipe stage's models are `eval.models`, else the run's sft and ppo
models; results land under `<run_dir>/eval/<bench>/<model label>/`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from actors import kit
from batray.errors import BatrayError
from batray.eval.run import compare, evaluate
from batray.eval.tables import render
from batray.feedback.client import Secret
from batray.ray_session import init_ray
from jobs.common import resolve, run_stage_command, setup_logging, stage_parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    if argv and argv[0] == "compare":
        p = argparse.ArgumentParser(prog="batray eval compare", description="runs side by side, in the paper's tables")
        p.add_argument("runs", nargs="+", help="run folders (or folders above them) holding results.json")
        p.add_argument("--out", default=None, help="also write the Markdown here")
        args = p.parse_args(argv[1:])
        text = compare(args.runs)
        print(text)
        if args.out:
            Path(args.out).write_text(text, encoding="utf-8")
        return 0
    p = stage_parser("eval", "CMMLU / C-Eval evaluation in the paper's table layout (§4); `eval compare RUN...`")
    p.add_argument("--benchmark", choices=["cmmlu", "ceval"], help="one benchmark (default: eval.benchmarks)")
    p.add_argument("--data", help="folder with the official CSV layout (or holding cmmlu/ and ceval/)")
    p.add_argument("--model", help="checkpoint folder or OpenAI-compatible base URL (http://host:port/v1)")
    p.add_argument("--shots", type=int, help="k dev items as shots (default: eval.shots)")
    p.add_argument("--mode", help="da (direct answer), cot (chain of thought) or rerank (cot, N samples ranked both ways)")
    p.add_argument("--subjects", help="comma-separated subject names (default: all present)")
    p.add_argument("--limit", type=int, help="at most N items per subject")
    p.add_argument("--out", help="output folder for results.json, predictions.jsonl, table.md")
    p.add_argument("--split", help="scored split (default: cmmlu test, ceval val)")
    p.add_argument("--label", help="the model's name in tables")
    p.add_argument("--served-model", help="endpoint: the model name to request (default: the first listed)")
    p.add_argument("--api-key-env", help="endpoint: environment variable holding the API key")
    p.add_argument("--num-actors", type=int, help="scorer actors (default: eval.num_actors)")
    p.add_argument("--batch-size", type=int, help="items per forward pass (default: eval.batch_size)")
    p.add_argument("--chat", action="store_true", help="wrap prompts in the model's chat template")
    args = p.parse_args(argv)
    overrides = {"subjects": args.subjects.split(",") if args.subjects else None, "limit": args.limit,
                 "num_actors": args.num_actors, "batch_size": args.batch_size, "chat": True if args.chat else None}
    for key, value in overrides.items():
        if value is not None:
            args.overrides.append(f"eval.{key}={value if not isinstance(value, list) else '[' + ','.join(value) + ']'}")
    if args.model is None:
        if any(v is not None for v in (args.benchmark, args.shots, args.mode, args.out)):
            raise BatrayError("eval: --model is required with --benchmark/--shots/--mode/--out")
        result = run_stage_command("eval", args)
        if result is not None:
            tables = Path(result.plan.outputs["tables"])
            print(tables.read_text(encoding="utf-8") if tables.is_file() else "")
        return 0
    cfg = resolve(args)
    missing = [f"--{k}" for k in ("benchmark", "data", "out") if getattr(args, k) is None]
    if missing:
        raise BatrayError(f"eval: {', '.join(missing)} required with --model")
    mode = args.mode or cfg.eval.modes[0]
    shots = args.shots if args.shots is not None else cfg.eval.shots[0]
    if shots < 0:
        raise BatrayError(f"eval: --shots must be >= 0 (got {shots})")
    init_ray(cfg)
    key = Secret(os.environ.get(args.api_key_env) if args.api_key_env else None)
    results = evaluate(args.model, args.benchmark, args.data, args.out, shots=shots, mode=mode, ecfg=cfg.eval,
                       scorer_cls=kit().need("eval_scorer"), label=args.label, split=args.split,
                       served_model=args.served_model, api_key=key)
    print(render([results]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
