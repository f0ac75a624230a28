"""AI feedback (§3.3; `batray label`): labeler actors ask judges on OpenAI-compatible endpoints.

Output under `out_dir`: `ai.parquet` (preferences contract, `source: ai`, `rater: model@url`),
`failures.parquet` (pairs not labeled, with the reason), `rejected_pairs.jsonl` (input rows that are
not valid pairs). A rerun labels only the (pair, rater) combinations missing from `ai.parquet`.

Judges are `Judge`s: an endpoint's settings and its API key as a `Secret`, handed to the labelers as
call arguments (never through the environment). With no endpoint configured, `local_judge` serves
one on 127.0.0.1: the run's SFT model (`batray serve`) or the demo world's fact checker.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from batray.config import EndpointConfig, RecipeConfig, join_uri
from batray.data.io import drop_duplicate_ids, exists, read_parquet, read_rows, write_parquet, write_rejected
from batray.data.schemas import PREFERENCES
from batray.errors import BatrayError
from batray.feedback.client import EndpointSettings, Secret
from batray.feedback.labeling import questions_per_pair, rater_name
from batray.progress import Progress
from batray.ray_session import init_ray

log = logging.getLogger("batray.label")

FAILURES = pa.schema([("pair_id", pa.string()), ("prompt", pa.string()), ("response_a", pa.string()),
                      ("response_b", pa.string()), ("rater", pa.string()), ("error", pa.string())])


@dataclass(frozen=True)
class Judge:
    """One judge endpoint as the labelers use it."""

    settings: EndpointSettings
    key: Secret


def judge_from_config(ep: EndpointConfig, num_labelers: int) -> Judge:
    """A configured endpoint as a `Judge`: the key read from the env var the config names, the request
    limit shared by the labelers."""
    fields = {f.name for f in dataclasses.fields(EndpointSettings)}
    settings = EndpointSettings(**{k: v for k, v in ep.model_dump().items() if k in fields})
    settings.concurrency = math.ceil(ep.concurrency / num_labelers)
    return Judge(settings, Secret(os.environ.get(ep.api_key_env) if ep.api_key_env else None))


def read_pairs(uri: str, rejected_uri: str) -> list[dict]:
    """Valid pairs of `uri`; invalid rows and repeated pair_ids are counted and written aside."""
    rows, report = read_rows(uri, "pairs")
    unique = drop_duplicate_ids(rows, report)
    log.info(report.summary(f"pairs {uri}"))
    write_rejected(report, rejected_uri)
    if not unique:
        raise BatrayError(f"{uri}: no valid pairs ({report.total} rows read)")
    return unique


def run_label(cfg: RecipeConfig, out_dir: str, *, pairs: str, judges: list[Judge], labeler_cls: type) -> str:
    """Label every pair of `pairs` with every judge through `label.num_labelers` labeler actors
    (`labeler_cls`); returns the path of `ai.parquet`, saved after every chunk."""
    from batray.groups import ActorGroup

    lc = cfg.label
    if not judges:
        raise BatrayError("label: no judge endpoint (label.endpoints, or label.local_judge sft|world)")
    todo_pairs = read_pairs(pairs, join_uri(out_dir, "rejected_pairs.jsonl"))
    ai_path, fail_path = join_uri(out_dir, "ai.parquet"), join_uri(out_dir, "failures.parquet")
    labeled = read_parquet(ai_path).to_pylist() if exists(ai_path) else []
    done = {(r["pair_id"], r["rater"]) for r in labeled}
    init_ray(cfg)
    group = ActorGroup(labeler_cls, lc.num_labelers, num_cpus=lc.labeler_cpus, name="labeler",
                       init_kwargs={"templates_dir": lc.templates})
    failures: list[dict] = []
    try:
        group.call("ready")
        for judge in judges:
            rater = rater_name(judge.settings)
            todo = [p for p in todo_pairs if (p["pair_id"], rater) not in done]
            log.info("%s: %d pairs to label (%d already labeled)", rater, len(todo), len(todo_pairs) - len(todo))
            new_rows, new_failures, stats = label_with_pool(group, todo, judge, cfg,
                                                            save=lambda rows: write_parquet(labeled + rows, ai_path,
                                                                                            PREFERENCES))
            labeled += new_rows
            failures += new_failures
            log.info("%s: %d labeled, %d failed; %s", rater, len(new_rows), len(new_failures),
                     ", ".join(f"{k}={v}" for k, v in sorted(stats.items())))
    finally:
        group.kill()
    write_parquet(labeled, ai_path, PREFERENCES)
    write_parquet(failures, fail_path, FAILURES)
    print(summary(labeled, failures))
    return ai_path


def label_with_pool(group, todo: list[dict], judge: Judge, cfg: RecipeConfig, save) -> tuple[list, list, Counter]:
    """Chunks of `todo` to idle labelers; results saved as each chunk returns. The request budget
    (`label.max_requests`) is handed out per chunk (at most what the chunk could use) and what a chunk
    did not use returns to the pool."""
    lc = cfg.label
    per_pair_max = questions_per_pair(lc.both_orders) * (judge.settings.max_retries + 1)
    chunks = [todo[i: i + lc.chunk_size] for i in range(0, len(todo), lc.chunk_size)]
    budget = {"left": lc.max_requests}
    allotted: dict[int, int | None] = {}
    rows, failures, stats = [], [], Counter()

    def call_args(chunk: list[dict]) -> tuple[tuple, dict]:
        allot = None if budget["left"] is None else min(budget["left"], len(chunk) * per_pair_max)
        if allot is not None:
            budget["left"] -= allot
        allotted[id(chunk)] = allot
        return (chunk, judge.settings, judge.key), {"both_orders": lc.both_orders,
                                                      "on_disagreement": lc.on_order_disagreement,
                                                      "max_requests": allot}

    def on_result(_index: int, chunk: list[dict], result: dict) -> None:
        rows.extend(result["rows"])
        failures.extend(result["failures"])
        stats.update(result["stats"])
        allot = allotted.pop(id(chunk))
        if allot is not None:
            budget["left"] += allot - result["stats"]["budget_used"]
        save(rows)

    with Progress(len(todo), f"label {rater_name(judge.settings)}", unit="pairs") as progress:
        group.map_unordered("label", chunks, call_args=call_args, on_result=on_result, progress=progress, weight=len)
    return rows, failures, stats


@contextlib.contextmanager
def local_judge(cfg: RecipeConfig, kind: str, *, sft_model: str | None, world: str | None) -> Iterator[Judge]:
    """Serve a judge for the length of the block: the run's SFT model (`sft`) or the demo world's fact
    checker (`world`). On 127.0.0.1 for a one-node Ray; on all interfaces with a random API key (handed
    to the labelers as a `Secret`, never written) when labelers may run on other nodes."""
    import secrets

    import ray

    from batray.models.presets import is_checkpoint_dir
    from batray.serve import start_server

    if kind == "world":
        from batray.feedback.world_judge import start_world_judge

        if world is None or not exists(world):
            raise BatrayError(f"label: local_judge=world needs the demo world at {world}; run `batray run --only data`")
        with start_world_judge(world) as handle:
            log.info("serving the demo world's fact checker as the judge on %s", handle.url)
            yield Judge(EndpointSettings(url=handle.url, model="demo-world-judge"), Secret(None))
        return
    if kind != "sft":
        raise BatrayError("label: no endpoint; pass --endpoint URL --model NAME or set label.endpoints")
    if sft_model is None or not is_checkpoint_dir(sft_model):
        raise BatrayError(f"label: no endpoint given and no SFT model at {sft_model} to serve as the judge; "
                          "pass --endpoint URL --model NAME or run `batray sft` first")
    init_ray(cfg)
    one_node = sum(1 for n in ray.nodes() if n.get("Alive")) <= 1
    key = None if one_node else secrets.token_urlsafe(24)
    with start_server(sft_model, host="127.0.0.1" if one_node else "0.0.0.0", api_key=key) as handle:
        url = handle.url if one_node else handle.url.replace("127.0.0.1", ray.util.get_node_ip_address())
        log.info("serving the SFT model %s as the judge on %s", sft_model, url)
        # Our own server scores the option numbers directly (guided_choice): a small SFT model need not
        # have learned to answer with a bare number for its log-probabilities to be read.
        yield Judge(EndpointSettings(url=url, model=handle.model, guided_choice=True), Secret(key))


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
