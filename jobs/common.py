"""What every stage entrypoint shares: the common flags, config loading, logging, and running one stage
through the registry (`batray.stages`)."""

from __future__ import annotations

import argparse
import logging
import sys

from batray.config import RecipeConfig, load_config


class StageArgumentParser(argparse.ArgumentParser):
    """Overrides may come before, between or after the options (`batray run CONFIG --run-dir D a.b=1`):
    plain argparse stops collecting a positional list at the first option."""

    def parse_args(self, args=None, namespace=None):
        return self.parse_intermixed_args(args, namespace)


def stage_parser(stage: str, description: str) -> argparse.ArgumentParser:
    """`batray STAGE --config FILE [--run-dir DIR] [key.sub=value ...]`."""
    p = StageArgumentParser(prog=f"batray {stage}", description=description)
    p.add_argument("--config", "-c", default=None, help="recipe YAML (default: the built-in defaults)")
    p.add_argument("--run-dir", default=None, help="overrides the config's run_dir")
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved plan (inputs and where each came from, outputs, status) and stop")
    p.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    return p


def resolve(args: argparse.Namespace) -> RecipeConfig:
    overrides = list(getattr(args, "overrides", None) or [])
    if getattr(args, "run_dir", None):
        overrides.append(f"run_dir={args.run_dir}")
    return load_config(args.config, overrides)


def setup_logging(level: int = logging.INFO) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def run_stage_command(stage: str, args: argparse.Namespace, *, out_dir: str | None = None,
                      cfg: RecipeConfig | None = None):
    """`batray STAGE`: the config (`cfg`, else read from `args`), then the stage through the registry, as
    `batray run` runs it. With `--dry-run`, the plan is printed instead; returns None then, else the
    `StageResult`."""
    from actors import kit
    from batray.stages import format_plan, resolve as resolve_stage, run_stage

    setup_logging()
    cfg = cfg or resolve(args)
    if getattr(args, "dry_run", False):
        print(format_plan(cfg, [resolve_stage(cfg, stage, out_dir=out_dir)]))
        return None
    return run_stage(cfg, stage, kit(), out_dir=out_dir)
