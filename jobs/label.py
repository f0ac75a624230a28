"""`batray label`: AI feedback (§3.3). Labeler actors ask judges on OpenAI-compatible endpoints.

    batray label --pairs FILE --endpoint URL --model NAME --out DIR [--concurrency N]
    batray label -c recipe.yaml            # label.endpoints: several judges, each a rater

Output under DIR (default `<run_dir>/label`): `ai.parquet` (preferences contract, `source: ai`,
`rater: model@url`), `failures.parquet` (pairs not labeled, with the reason), `rejected_pairs.jsonl`
(input rows that are not valid pairs). A rerun labels only the (pair, rater) combinations missing
from `ai.parquet`. With no endpoint at all, `label.local_judge` picks a judge served on 127.0.0.1: the run's SFT
model (`sft`) or the demo world's fact checker (`world`, the tiny recipe's). API keys are read from the env var
named by each endpoint's `api_key_env` and are never logged or written.
"""

from __future__ import annotations

import logging
import math
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa

from batray.config import EndpointConfig, RecipeConfig, join_uri
from batray.data.io import drop_duplicate_ids, exists, read_parquet, read_rows, write_parquet, write_rejected
from batray.data.schemas import PREFERENCES
from batray.errors import BatrayError
from jobs.common import init_ray, resolve, setup_logging, stage_parser

log = logging.getLogger("batray.label")

FAILURES = pa.schema([("pair_id", pa.string()), ("prompt", pa.string()), ("response_a", pa.string()),
                      ("response_b", pa.string()), ("rater", pa.string()), ("error", pa.string())])


def read_pairs(uri: str, rejected_uri: str) -> list[dict]:
    """Valid pairs of `uri`; invalid rows and repeated pair_ids are counted and written aside."""
    rows, report = read_rows(uri, "pairs")
    unique = drop_duplicate_ids(rows, report)
    log.info(report.summary(f"pairs {uri}"))
    write_rejected(report, rejected_uri)
    if not unique:
        raise BatrayError(f"{uri}: no valid pairs ({report.total} rows read)")
    return unique


def run_label(cfg: RecipeConfig, out_dir: str, *, pairs: str | None = None,
              endpoints: list[EndpointConfig] | None = None) -> str:
    """Label every pair of `pairs` with every endpoint; returns the path of `ai.parquet`."""
    from actors.group import ActorGroup
    from actors.labeler import LabelerActor
    from batray.feedback.client import EndpointSettings, Secret
    from batray.feedback.labeling import questions_per_pair, rater_name

    lc = cfg.label
    pairs = pairs or lc.pairs or join_uri(cfg.run_dir, "pairs", "pairs.parquet")
    endpoints = list(endpoints if endpoints is not None else lc.endpoints)
    todo_pairs = read_pairs(pairs, join_uri(out_dir, "rejected_pairs.jsonl"))
    ai_path, fail_path = join_uri(out_dir, "ai.parquet"), join_uri(out_dir, "failures.parquet")
    labeled = read_parquet(ai_path).to_pylist() if exists(ai_path) else []
    done = {(r["pair_id"], r["rater"]) for r in labeled}
    server = None
    init_ray(cfg)
    if not endpoints:
        server, judge = _serve_local_judge(cfg)
        endpoints = [judge]
    group = ActorGroup(LabelerActor, lc.num_labelers, num_cpus=lc.labeler_cpus, init_kwargs={"templates_dir": lc.templates})
    failures: list[dict] = []
    try:
        group.call("ready")
        for ep in endpoints:
            settings = EndpointSettings(
                url=ep.url, model=ep.model, concurrency=math.ceil(ep.concurrency / lc.num_labelers), timeout_s=ep.timeout_s,
                max_retries=ep.max_retries, backoff_s=ep.backoff_s, max_backoff_s=ep.max_backoff_s,
                top_logprobs=ep.top_logprobs, max_answer_tokens=ep.max_answer_tokens, guided_choice=ep.guided_choice)
            rater = rater_name(settings)
            todo = [p for p in todo_pairs if (p["pair_id"], rater) not in done]
            log.info("%s: %d pairs to label (%d already labeled)", rater, len(todo), len(todo_pairs) - len(todo))
            key = Secret(os.environ.get(ep.api_key_env) if ep.api_key_env else None)
            per_pair = questions_per_pair(lc.both_orders) * (ep.max_retries + 1)
            new_rows, new_failures, stats = _label_with_pool(group, todo, settings, key, lc, per_pair,
                                                             lambda rows: write_parquet(labeled + rows, ai_path, PREFERENCES))
            labeled += new_rows
            failures += new_failures
            log.info("%s: %d labeled, %d failed; %s", rater, len(new_rows), len(new_failures),
                     ", ".join(f"{k}={v}" for k, v in sorted(stats.items())))
    finally:
        group.kill()
        if server is not None:
            server.close()
    write_parquet(labeled, ai_path, PREFERENCES)
    write_parquet(failures, fail_path, FAILURES)
    print(summary(labeled, failures))
    return ai_path


def _label_with_pool(group, todo: list[dict], settings, key, lc, per_pair_max: int, save) -> tuple[list, list, Counter]:
    """Chunks of `todo` to idle labelers; results saved as each chunk returns. The request budget is
    handed out per chunk (at most what the chunk could use) and unused budget returns to the pool."""
    import ray

    chunks = [todo[i: i + lc.chunk_size] for i in range(0, len(todo), lc.chunk_size)]
    budget_left = lc.max_requests
    rows, failures, stats = [], [], Counter()
    in_flight: dict = {}  # ref -> (actor, allotted budget)
    idle = list(group.actors)
    while chunks or in_flight:
        while chunks and idle:
            chunk, actor = chunks.pop(0), idle.pop()
            allot = None if budget_left is None else min(budget_left, len(chunk) * per_pair_max)
            if budget_left is not None:
                budget_left -= allot
            ref = actor.label.remote(chunk, vars(settings), key, both_orders=lc.both_orders,
                                     on_disagreement=lc.on_order_disagreement, max_requests=allot)
            in_flight[ref] = (actor, allot)
        ready, _ = ray.wait(list(in_flight), num_returns=1)
        actor, allot = in_flight.pop(ready[0])
        idle.append(actor)
        result = ray.get(ready[0])
        rows += result["rows"]
        failures += result["failures"]
        stats.update(result["stats"])
        if budget_left is not None:
            budget_left += allot - result["stats"]["budget_used"]
        save(rows)
    return rows, failures, stats


def _serve_local_judge(cfg: RecipeConfig):
    """Serve the configured local judge: the run's SFT model, or the demo world's fact checker.

    On 127.0.0.1 for a one-node Ray; on all interfaces with a random API key (handed to the
    labelers, never written) when labelers may run elsewhere."""
    import secrets

    import ray

    from batray.models.presets import is_checkpoint_dir
    from batray.serve import start_server

    if cfg.label.local_judge == "none":
        raise BatrayError("label: no endpoint; pass --endpoint URL --model NAME or set label.endpoints")
    if cfg.label.local_judge == "world":
        from batray.feedback.world_judge import start_world_judge

        world_path = join_uri(cfg.run_dir, "data", "world.json")
        if not Path(world_path).is_file():
            raise BatrayError(f"label: local_judge=world needs the demo world at {world_path}; run `batray run --only data`")
        handle = start_world_judge(world_path)
        log.info("serving the demo world's fact checker as the judge on %s", handle.url)
        return handle, EndpointConfig(url=handle.url, model="demo-world-judge", api_key_env=None)
    sft = join_uri(cfg.run_dir, "sft", "final")
    if not is_checkpoint_dir(sft):
        raise BatrayError(f"label: no endpoint given and no SFT model at {sft} to serve as the judge; "
                          "pass --endpoint URL --model NAME or run `batray sft` first")
    one_node = sum(1 for n in ray.nodes() if n.get("Alive")) <= 1
    key = None if one_node else secrets.token_urlsafe(24)
    handle = start_server(sft, host="127.0.0.1" if one_node else "0.0.0.0", api_key=key)
    url = handle.url if one_node else handle.url.replace("127.0.0.1", ray.util.get_node_ip_address())
    if key is not None:
        os.environ[_JUDGE_KEY_ENV] = key
    log.info("serving the SFT model %s as the judge on %s", sft, url)
    # Our own server scores the option numbers directly (guided_choice): a small SFT model need not
    # have learned to answer with a bare number for its log-probabilities to be read.
    judge = EndpointConfig(url=url, model=handle.model, api_key_env=_JUDGE_KEY_ENV if key else None, guided_choice=True)
    return handle, judge


_JUDGE_KEY_ENV = "BATRAY_LOCAL_JUDGE_API_KEY"


def summary(labeled: list[dict], failures: list[dict]) -> str:
    lines = [f"ai labels: {len(labeled)} rows, {len(failures)} failures"]
    by_rater = Counter(r["rater"] for r in labeled)
    for rater, n in sorted(by_rater.items()):
        d = Counter(r["d"] for r in labeled if r["rater"] == rater)
        lines.append(f"  {rater}: {n} labeled (a preferred {d[-1]}, b preferred {d[1]}, ties {d[0]})")
    reasons = Counter(f["error"].split(":")[0] for f in failures)
    for reason, n in reasons.most_common(5):
        lines.append(f"  failed: {n} x {reason}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("label", "AI feedback: judges on OpenAI-compatible endpoints label pairs (§3.3)")
    p.add_argument("--pairs", default=None, help="pairs parquet/jsonl (default: label.pairs or <run_dir>/pairs)")
    p.add_argument("--endpoint", default=None, help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    p.add_argument("--model", default=None, help="the judge model name at the endpoint")
    p.add_argument("--out", default=None, help="output folder (default: <run_dir>/label)")
    p.add_argument("--concurrency", type=int, default=None, help="requests in flight per endpoint")
    p.add_argument("--api-key-env", default=None, help="env var holding the endpoint's key (default OPENAI_API_KEY)")
    args = p.parse_args(argv)
    cfg = resolve(args)
    setup_logging()
    endpoints = None
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
        endpoints = [e.model_copy(update={"concurrency": args.concurrency}) for e in (endpoints or cfg.label.endpoints)]
    run_label(cfg, args.out or cfg.stage_dir("label"), pairs=args.pairs, endpoints=endpoints)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
