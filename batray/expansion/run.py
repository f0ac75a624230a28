"""Width (Eqs. 5-7) and depth (Alg. 1 stacking) expansion of a checkpoint (`batray expand SRC DST`).

The plan (mapping s(.) drawn once from the seed, every output tensor laid out) is built and
validated on the driver; each output shard is then written by one of a pool of shard-writer actors
(`ActorGroup.map_unordered`), each streaming its tensors from the source shards, so the driver and
every writer hold a few tensors at a time, never the model. The logit deviation is measured and
saved in `DST/expansion.json`.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from batray.checkpoint import is_complete
from batray.config import RecipeConfig
from batray.errors import BatrayError
from batray.expansion import REPORT, ExpansionPlan, Request, expand, plan_expansion, run_serially
from batray.progress import Progress
from batray.ray_session import cluster_address, init_ray

log = logging.getLogger("batray.expand")


# With no Ray cluster to join, a machine with this many CPUs or fewer writes shards in one process: starting a
# local cluster and its writer actors costs ~20 s there, more than a second writer sharing the 2 cores and the disk
# gains (benchmarks/RESULTS.md, expansion).
SERIAL_MAX_CPUS = 2


def writes_in_process(cfg: RecipeConfig, num_shards: int) -> bool:
    """Whether `expand` writes every shard in its own process rather than through a pool of writer actors:
    one shard or one writer asked for; or `num_writers` unset, no Ray cluster to join (none initialized,
    no `ray.address` or RAY_ADDRESS) and at most `SERIAL_MAX_CPUS` CPUs here."""
    import ray

    if num_shards == 1 or cfg.expand.num_writers == 1:
        return True
    if cfg.expand.num_writers is not None or ray.is_initialized() or cluster_address(cfg):
        return False
    return (os.cpu_count() or 1) <= SERIAL_MAX_CPUS


def shard_runner(cfg: RecipeConfig, writer_cls: type):
    """`run_shards` for `expand`: a pool of `writer_cls` actors (`expand.num_writers`, default one per
    CPU of the cluster, at most one per shard), each shard handed to whichever writer is idle; where
    `writes_in_process` says so, this process writes the shards one by one (the same streamed writer)."""
    def run(plan: ExpansionPlan, out_dir: str) -> list[dict]:
        import ray

        if writes_in_process(cfg, len(plan.shards)):  # no cluster, no actor to start
            return run_serially(plan, out_dir)

        from batray.groups import ActorGroup

        init_ray(cfg)
        n = cfg.expand.num_writers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        group = ActorGroup(writer_cls, min(n, len(plan.shards)), num_cpus=1.0, init_args=(plan,), name="shard-writer")
        try:
            with Progress(plan.total_bytes, "expand: shards", unit="bytes") as progress:
                done = group.map_unordered("write", list(range(len(plan.shards))), progress=progress,
                                           call_args=lambda i: ((i, out_dir), {}),
                                           weight=lambda i: sum(t.nbytes for t in plan.shards[i]))
        finally:
            group.kill()
        return sorted(done, key=lambda r: r["name"])

    return run


def same_request(report_path: Path, src: str, request: Request) -> bool:
    """Whether a finished expansion at DST was made from `src` with this very request (then: skip)."""
    try:
        old = json.loads(report_path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    want = {k: getattr(request, k) for k in ("method", "stack", "seed", "noise_std")}
    if old.get("src") != src or any(old.get(k) != v for k, v in want.items()):
        return False
    target = old.get("target", {})
    asked = {"hidden_size": request.hidden_size, "intermediate_size": request.intermediate_size,
             "num_heads": request.num_heads, "num_kv_heads": request.num_kv_heads, "num_layers": request.num_layers}
    source = old.get("source", {})
    return all(target.get(k) == (v if v is not None else source.get(k)) for k, v in asked.items())


def run_expand(cfg: RecipeConfig, *, src: str, dst: str, writer_cls: type | None = None) -> dict:
    """Expand `src` into `dst` per `cfg.expand`; returns the report (also in DST/expansion.json).
    `writer_cls`: the shard-writer actor class (None: shards written in this process, one by one)."""
    from batray.models.lora import is_adapter_folder

    if is_adapter_folder(src):
        raise BatrayError(f"expand: {src} is a LoRA adapter (adapter_config.json, no weights of its own); expand a "
                          "merged model: the stage's final/ with <stage>.lora.merge true (the default)")
    ecfg = cfg.expand
    request = Request.from_config(ecfg)
    if is_complete(dst) and same_request(Path(dst) / REPORT, src, request):
        log.info("expand: %s is already this expansion of %s; skipping", dst, src)
        return json.loads((Path(dst) / REPORT).read_text())
    # Validate (and lay out) before anything starts: a bad request fails here, nothing written.
    plan = plan_expansion(src, request, max_shard_bytes=int(ecfg.max_shard_mb * 2**20))
    kwargs = {"plan": plan}
    if writer_cls is not None:
        kwargs["run_shards"] = shard_runner(cfg, writer_cls)
    return expand(src, dst, request, probe=ecfg.probe, probe_tokens=ecfg.probe_tokens, config_hash=cfg.digest(),
                  **kwargs)


def format_report(report: dict, dst: str) -> str:
    s, t, dev = report["source"], report["target"], report["deviation"]
    sizes = ", ".join(f"{k} {s[k]}->{t[k]}" for k in ("num_layers", "hidden_size", "intermediate_size", "num_heads",
                                                      "num_kv_heads") if s[k] != t[k]) or "no size change"
    if "skipped" in dev:
        how_close = f"deviation not measured ({dev['skipped']})"
    else:
        how_close = (f"logit deviation max {dev['max_abs']:.3g}, mean {dev['mean_abs']:.3g} "
                     f"(source logit std {dev['reference_logit_std']:.3g})")
    return (f"expanded {report['model_type']} ({report['method']}, stack {report['stack']}): {sizes}; "
            f"{report['shards']} shard(s), {report['bytes_written'] / 1e6:.1f} MB -> {dst}\n{how_close}")
