"""`batray annotate serve|add-user|export`: the human preference annotation app (§3.3, Fig. 1).

    batray annotate add-user alice [--admin]          # prints alice's token once
    batray annotate serve --tasks pairs.parquet       # http://127.0.0.1:8700
    batray annotate export [OUT]                      # preferences contract, source=human

Every subcommand takes the common `--config/--run-dir/key=value` flags; the database is
`--db URL` or `annotate.db`, else SQLite at <run_dir>/annotate/annotate.db.
"""

from __future__ import annotations

import argparse
import logging
import sys

from batray.config import RecipeConfig, join_uri
from batray.errors import BatrayError
from batray.stages.registry import stage_outputs
from jobs.common import resolve, setup_logging, stage_parser

log = logging.getLogger("batray.annotate")

SUBCOMMANDS = {
    "serve": "serve the annotation page and its JSON API",
    "add-user": "create an annotator (or admin) and print their token once",
    "export": "write every label as the preferences contract (source: human)",
}


def _parser(sub: str) -> argparse.ArgumentParser:
    p = stage_parser(f"annotate {sub}", SUBCOMMANDS[sub])
    p.add_argument("--db", default=None, help="SQLAlchemy database URL (default: SQLite in <run_dir>/annotate)")
    if sub == "serve":
        p.add_argument("--tasks", default=None, help="pairs parquet/jsonl (default: <run_dir>/pairs/pairs.parquet)")
        p.add_argument("--host", default=None)
        p.add_argument("--port", type=int, default=None)
    elif sub == "add-user":
        p.add_argument("name")
        p.add_argument("--admin", action="store_true", help="may open the admin view")
        p.add_argument("--rotate", action="store_true", help="issue a new token for an existing user")
    else:
        p.add_argument("out", nargs="?", default=None, help="output .parquet or .jsonl (default: <run_dir>/annotate/human.parquet)")
    return p


def _db_url(args: argparse.Namespace, cfg: RecipeConfig) -> str:
    from batray.annotate.db import default_sqlite_url

    return args.db or cfg.annotate.db or default_sqlite_url(cfg.stage_dir("annotate"))


def serve(args: argparse.Namespace, cfg: RecipeConfig) -> int:
    import uvicorn

    from batray.annotate.app import create_app
    from batray.annotate.db import Database
    from batray.annotate.store import any_admin, import_tasks
    from batray.data.io import write_rejected

    acfg = cfg.annotate
    tasks = args.tasks or acfg.tasks or stage_outputs(cfg, "pairs")["pairs"]
    db = Database(_db_url(args, cfg))
    added, report = import_tasks(db, tasks, seed=acfg.seed, overlap=acfg.overlap)
    log.info("%s; %d new tasks", report.summary(tasks), added)
    write_rejected(report, join_uri(cfg.stage_dir("annotate"), "rejected_tasks.jsonl"))
    if not any_admin(db):
        log.warning("no admin yet: `batray annotate add-user NAME --admin` creates one for the admin view")
    host, port = args.host or acfg.host, args.port or acfg.port
    log.info("annotation page on http://%s:%d/ (database %s)", host, port, db.url)
    uvicorn.run(create_app(db, lease_minutes=acfg.lease_minutes, max_body_bytes=acfg.max_body_bytes), host=host, port=port,
                log_level="warning")
    return 0


def add_user(args: argparse.Namespace, cfg: RecipeConfig) -> int:
    from batray.annotate.db import Database, add_user as create

    db = Database(_db_url(args, cfg))
    token = create(db, args.name, admin=args.admin, rotate=args.rotate)
    role = "admin" if args.admin else "annotator"
    print(f"{role} {args.name!r}: token (shown once, keep it private):", file=sys.stderr)
    print(token)
    return 0


def export(args: argparse.Namespace, cfg: RecipeConfig) -> int:
    from batray.annotate.db import Database
    from batray.annotate.labels import export as write

    out = args.out or join_uri(cfg.stage_dir("annotate"), "human.parquet")
    n = write(Database(_db_url(args, cfg)), out)
    log.info("exported %d human labels to %s", n, out)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        lines = ["usage: batray annotate {serve,add-user,export} ...", ""]
        lines += [f"  {name:<9} {text}" for name, text in SUBCOMMANDS.items()]
        if argv and argv[0] in ("-h", "--help"):
            print("\n".join(lines))
            return 0
        if argv:
            lines.insert(0, f"batray annotate: unknown subcommand {argv[0]!r}")
        print("\n".join(lines), file=sys.stderr)
        return 2
    setup_logging()
    args = _parser(argv[0]).parse_args(argv[1:])
    if argv[0] == "export" and args.out is None:
        # argparse gives a trailing OUT to the greedy overrides list; an override always has '='
        paths = [o for o in args.overrides if "=" not in o]
        if len(paths) > 1:
            raise BatrayError(f"export takes one OUT path, got {paths}")
        if paths:
            args.out = paths[0]
            args.overrides.remove(paths[0])
    cfg = resolve(args)
    return {"serve": serve, "add-user": add_user, "export": export}[argv[0]](args, cfg)


if __name__ == "__main__":
    sys.exit(main())
