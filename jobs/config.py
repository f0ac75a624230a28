"""`batray config validate FILE [k=v ...]` and `batray config show [FILE] [k=v ...]`."""

from __future__ import annotations

import argparse

from batray.config import dump_config, load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="batray config", description="validate or print a recipe config")
    sub = p.add_subparsers(dest="action", required=True)
    v = sub.add_parser("validate", help="check a config file (and overrides); exit 2 with the key path on error")
    v.add_argument("file")
    v.add_argument("overrides", nargs="*", metavar="key.sub=value")
    s = sub.add_parser("show", help="print the fully resolved config (defaults filled in) as YAML")
    s.add_argument("file", nargs="?", default=None)
    s.add_argument("overrides", nargs="*", metavar="key.sub=value")
    args = p.parse_args(argv)
    file = args.file
    overrides = list(args.overrides)
    if file is not None and "=" in file and not file.endswith((".yaml", ".yml")):
        overrides.insert(0, file)  # `batray config show key=value` with the built-in defaults
        file = None
    cfg = load_config(file, overrides)
    if args.action == "validate":
        print(f"{file}: ok (run_dir {cfg.run_dir}, stages {', '.join(cfg.stages)}, config hash {cfg.digest()})")
    else:
        print(dump_config(cfg), end="")
    return 0
