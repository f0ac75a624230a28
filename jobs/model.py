"""`batray model info PRESET_OR_PATH`: architecture and exact parameter count (meta device)."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from batray.models.presets import PRESETS, describe


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="batray model", description="model tools")
    sub = p.add_subparsers(dest="action", required=True)
    i = sub.add_parser("info", help=f"architecture and exact parameter count; presets: {', '.join(PRESETS)}")
    i.add_argument("model", help="preset name, checkpoint folder or hub name")
    args = p.parse_args(argv)
    info = describe(args.model)
    table = Table(title=f"{args.model}", show_header=False)
    for k, v in info.items():
        table.add_row(k, f"{v:,}" if k == "parameters" else str(v))
    Console().print(table)
    return 0
