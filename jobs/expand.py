"""`batray expand SRC DST [...]`: width (Eqs. 5-7) and depth (Alg. 1 stacking) expansion on Ray.

    batray expand ckpt/15b ckpt/30b --hidden-size 11264 --num-heads 88 --num-kv-heads 4 \
        --intermediate-size 27392 --method exact
    batray expand ckpt/small ckpt/deep --num-layers 8 --stack zero

SRC/DST are `expand.src` (else the latest model stage before expand, else `model.path`) and
`expand.dst` (else `<run_dir>/expand/final`). The work: `batray.expansion.run` (shard-writer actors
stream the weights); the logit deviation is printed and saved in `DST/expansion.json`.
"""

from __future__ import annotations

import json
from pathlib import Path

from batray.errors import BatrayError
from batray.expansion import REPORT
from batray.expansion.run import format_report
from jobs.common import run_stage_command, stage_parser

# CLI flag -> ExpandConfig field; flags win over the config file and its overrides.
FLAGS = {
    "--hidden-size": ("hidden_size", int),
    "--intermediate-size": ("intermediate_size", int),
    "--num-heads": ("num_heads", int),
    "--num-kv-heads": ("num_kv_heads", int),
    "--num-layers": ("num_layers", int),
    "--method": ("method", str),
    "--stack": ("stack", str),
    "--seed": ("seed", int),
    "--noise-std": ("noise_std", float),
    "--max-shard-mb": ("max_shard_mb", float),
}


def build_parser():
    p = stage_parser("expand", "width (Eqs. 5-7) and depth (Alg. 1 stacking) parameter expansion")
    p.usage = ("batray expand [SRC DST] [--hidden-size H] [--intermediate-size F] [--num-heads N] "
               "[--num-kv-heads K] [--num-layers L] [--method fpi|exact] [--stack copy|zero] [--seed S] "
               "[--config FILE] [--dry-run] [key.sub=value ...]")
    for flag, (field, kind) in FLAGS.items():
        choices = {"--method": ["fpi", "exact"], "--stack": ["copy", "zero"]}.get(flag)
        p.add_argument(flag, dest=field, type=kind, default=None, choices=choices)
    p.add_argument("--no-probe", action="store_true", help="skip the logit-deviation probe")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    # SRC and DST are the positionals without '='; the rest are key.sub=value overrides.
    paths = [a for a in args.overrides if "=" not in a]
    args.overrides = [a for a in args.overrides if "=" in a]
    if len(paths) > 2:
        raise BatrayError(f"expand takes at most SRC and DST, got {len(paths)} paths: {' '.join(paths)}")
    for flag, (field, _) in FLAGS.items():
        value = getattr(args, field)
        if value is not None:
            args.overrides.append(f"expand.{field}={value}")
    if args.no_probe:
        args.overrides.append("expand.probe=false")
    for key, path in zip(("expand.src", "expand.dst"), paths):
        args.overrides.append(f"{key}={path}")
    result = run_stage_command("expand", args)
    if result is not None:
        dst = result.plan.outputs["model"]
        print(format_report(json.loads((Path(dst) / REPORT).read_text()), dst))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
