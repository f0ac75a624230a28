"""`batray serve CHECKPOINT [--host H] [--port P] [--api-key K]`: an OpenAI-compatible server.

The API key comes from `--api-key`, else from the env var named by `serve.api_key_env`
(BATRAY_API_KEY by default); with neither, the server is open. Every `serve.*` key of the config can
be overridden on the command line (`serve.max_batch_size=16`). Requests may carry the extra field
`rerank` (bidirectional reranking, `batray.bidirectional.serve_hook`; defaults in `serve.rerank`).
"""

from __future__ import annotations

import logging
import os

from jobs.common import resolve, setup_logging, stage_parser

log = logging.getLogger("batray.serve")


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("serve", "an OpenAI-compatible HTTP server for a checkpoint (/v1/chat/completions, /v1/completions)")
    p.usage = "batray serve CHECKPOINT [--host H] [--port P] [--api-key K] [--config FILE] [key.sub=value ...]"
    p.add_argument("--host", default=None, help="default: serve.host (127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="default: serve.port (8000); 0 picks a free port")
    p.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` (else env serve.api_key_env)")
    p.add_argument("--backend", choices=["auto", "hf", "vllm"], default=None)
    p.add_argument("--model-name", default=None, help="the model id clients pass (default: the folder name)")
    args = p.parse_args(argv)
    # CHECKPOINT shares the positional slots with the key=value overrides: it is the one without '='.
    paths = [a for a in args.overrides if "=" not in a]
    if len(paths) != 1:
        p.error("give exactly one CHECKPOINT folder")
    args.checkpoint = paths[0]
    args.overrides = [a for a in args.overrides if "=" in a]
    cfg = resolve(args).serve
    setup_logging()
    from batray.errors import BatrayError
    from batray.models.presets import is_checkpoint_dir
    from batray.serve import load_served_model, run_server

    if not is_checkpoint_dir(args.checkpoint):
        raise BatrayError(f"{args.checkpoint!r} is not a checkpoint folder (no config.json)")
    api_key = args.api_key or (os.environ.get(cfg.api_key_env) if cfg.api_key_env else None) or None
    served = load_served_model(args.checkpoint, backend=args.backend or cfg.backend, device=cfg.device,
                               name=args.model_name or cfg.model_name, default_max_tokens=cfg.default_max_tokens)
    host, port = args.host or cfg.host, cfg.port if args.port is None else args.port
    log.info("serving %r as model %r (%s)", args.checkpoint, served.name, "API key required" if api_key else "no API key")
    from batray.bidirectional.serve_hook import make_rerank_hook

    run_server(served, host=host, port=port, api_key=api_key, max_batch_size=cfg.max_batch_size,
               batch_wait_ms=cfg.batch_wait_ms, max_rows_per_request=cfg.max_rows_per_request,
               max_queued_rows=cfg.max_queued_rows, max_body_bytes=cfg.max_body_bytes,
               rerank=make_rerank_hook(cfg.rerank))  # `rerank` field: issue 11
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
