"""`batray run CONFIG`: every stage of the BatGPT recipe chained, then `report.html`.

    batray run configs/tiny.yaml [--run-dir DIR] [--only STAGE] [--from STAGE] [--dry-run] [key.sub=value ...]

Each stage writes under `<run_dir>/<stage>/` and skips itself when its output is complete, so a rerun
continues where a killed run stopped. Inputs are resolved by `batray.stages` exactly as `batray STAGE`
resolves them; `--dry-run` prints that plan (inputs with where each came from, outputs, status).
"""

from __future__ import annotations

from actors import kit
from batray.config import STAGES
from batray.errors import BatrayError
from batray.stages import format_plan, plan_recipe, run_recipe, select_stages
from jobs.common import resolve, setup_logging, stage_parser


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("run", "the whole BatGPT recipe: every stage in `stages`, finished ones skipped")
    p.add_argument("--only", action="append", choices=STAGES, help="run just this stage (repeatable)")
    p.add_argument("--from", dest="start", choices=STAGES, help="run from this stage on")
    p.add_argument("--no-report", action="store_true")
    p.usage = ("batray run [CONFIG | --config CONFIG] [--run-dir DIR] [--only STAGE] [--from STAGE] [--dry-run] "
               "[key.sub=value ...]")
    args = p.parse_args(argv)
    # `batray run CONFIG` is `batray run --config CONFIG`: the first positional that is a YAML path.
    files = [o for o in args.overrides if "=" not in o]
    for f in files:
        if not f.endswith((".yaml", ".yml")):
            raise BatrayError(f"{f!r}: expected a recipe .yaml file or a key.sub=value override")
        if args.config and args.config != f:
            raise BatrayError(f"two configs given: {f} and {args.config}")
        args.config = f
    args.overrides = [o for o in args.overrides if "=" in o]
    setup_logging()
    cfg = resolve(args)
    if args.dry_run:
        print(format_plan(cfg, plan_recipe(cfg, select_stages(cfg, args.only, args.start))))
        return 0
    run_recipe(cfg, kit(), only=args.only, start=args.start, report=not args.no_report)
    return 0
