"""`batray data`: data tools.

    batray data demo OUT_DIR [--seed S] [--config FILE] [key=value ...]
        generate the bilingual demo world (batray.data.demo) and print what was written.
        Overrides are recipe keys (`data.demo.num_countries=8`) or, for short, the demo's own
        keys (`num_countries=8`).
    batray data validate FILE_OR_DIR --contract corpus|sft|prompts|pairs|preferences [--rejected OUT]
        check rows against a docs/DESIGN.md §3 contract, print the reject report and write rejected rows
        (with reasons) to OUT (default: FILE.rejected.jsonl). Exits 1 when any row is rejected.
"""

from __future__ import annotations

import argparse
import sys

from batray.config import DemoDataConfig, load_config
from batray.data.schemas import VALIDATORS


def _demo_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="batray data demo", description="generate the bilingual demo world into OUT_DIR")
    p.add_argument("out_dir", help="folder (local path or URI) to write the files into")
    p.add_argument("--seed", type=int, default=None, help="overrides data.demo.seed")
    p.add_argument("--config", "-c", default=None, help="recipe YAML whose data.demo section is used")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="data.demo.<key>=value or <key>=value")
    return p


def _validate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="batray data validate", description="check data against a docs/DESIGN.md §3 contract")
    p.add_argument("path", help="a JSONL/Parquet file or a folder of them (local path or URI)")
    p.add_argument("--contract", required=True, choices=sorted(VALIDATORS))
    p.add_argument("--rejected", default=None, help="where rejected rows go (default: PATH.rejected.jsonl)")
    return p


COMMANDS = {"demo": _demo_parser, "validate": _validate_parser}


def demo_config(config: str | None, overrides: list[str], seed: int | None) -> DemoDataConfig:
    """The demo section of a recipe, with overrides; bare demo keys are taken as data.demo.<key>."""
    full = [o if o.split("=", 1)[0] not in DemoDataConfig.model_fields else f"data.demo.{o}" for o in overrides]
    if seed is not None:
        full.append(f"data.demo.seed={seed}")
    return load_config(config, full).data.demo


def run_demo(args: argparse.Namespace) -> int:
    from batray.data.demo import generate_demo

    cfg = demo_config(args.config, args.overrides, args.seed)
    paths = generate_demo(args.out_dir, cfg)
    import json

    from batray.data.io import filesystem

    fs, manifest_path = filesystem(paths["manifest"])
    with fs.open_input_stream(manifest_path) as f:
        manifest = json.loads(f.read().decode("utf-8"))
    ents = ", ".join(f"{n} {t}" for t, n in manifest["entities"].items())
    print(f"demo world (seed {cfg.seed}): {ents}; {manifest['facts']} facts "
          f"({manifest['held_out_facts']} held out of instruction data, {manifest['unseen_facts']} unseen)")
    width = max(map(len, manifest["files"]))
    for name, info in manifest["files"].items():
        unit = "facts" if name == "world" else "rows"
        print(f"  {name:<{width}}  {info['rows']:>5} {unit:<5}  {args.out_dir.rstrip('/')}/{info['path']}")
    print(f"  {'manifest':<{width}}  {'':>11}  {paths['manifest']}")
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from batray.data.io import read_rows, write_rejected

    _, report = read_rows(args.path, args.contract)
    print(report.summary(f"{args.path} ({args.contract})"))
    if not report.rejected:
        return 0
    for r in report.rejected[:5]:
        where = f"{r['where']}: " if r.get("where") else ""
        print(f"  {where}{r['reason']}")
    out = args.rejected or args.path.rstrip("/") + ".rejected.jsonl"
    write_rejected(report, out)
    print(f"rejected rows with reasons: {out}")
    return 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0
    if argv[0] not in COMMANDS:
        print(f"batray data: unknown command {argv[0]!r}; one of: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    # intermixed, so `demo OUT --seed 3 key=value` may put positionals after an option
    args = COMMANDS[argv[0]]().parse_intermixed_args(argv[1:])
    return run_demo(args) if argv[0] == "demo" else run_validate(args)


if __name__ == "__main__":
    sys.exit(main())
