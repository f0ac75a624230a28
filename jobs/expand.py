"""`batray expand SRC DST [...]`: width (Eqs. 5-7) and depth (Alg. 1 stacking) expansion on Ray.

The plan (mapping s(.) drawn once from the seed, every output tensor laid out) is built here and put
in the object store; each output shard is one Ray task that streams its tensors from the source
shards, so the driver and every worker hold a few tensors at a time, never the model.

    batray expand ckpt/15b ckpt/30b --hidden-size 11264 --num-heads 88 --num-kv-heads 4 \
        --intermediate-size 27392 --method exact
    batray expand ckpt/small ckpt/deep --num-layers 8 --stack zero

SRC/DST default to `expand.src` (else the run's grow/final or pretrain/final) and `expand.dst`
(else `<run_dir>/expand/final`). The logit deviation is printed and saved in `DST/expansion.json`.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from batray.checkpoint import is_complete
from batray.config import RecipeConfig
from batray.errors import BatrayError
from batray.expansion import REPORT, ExpansionPlan, Request, expand, plan_expansion
from jobs.common import init_ray, resolve, setup_logging, stage_parser

log = logging.getLogger("batray.expand")

# CLI flag -> ExpandConfig field; flags win over the config file and its overrides.
FLAGS = {
    "--hidden-size": ("hidden_size", int),
    "--intermediate-size": ("intermediate_size", int),
    "--num-heads": ("num_heads", int),
    "--num-kv-heads": ("num_kv_heads", int),
    "--num-layers": ("num_layers", int),
    "--method": ("method", str),
    "--stack": ("stack", str),
    "--seed": ("seed", int),
    "--noise-std": ("noise_std", float),
    "--max-shard-mb": ("max_shard_mb", float),
}


def build_parser():
    p = stage_parser("expand", "width (Eqs. 5-7) and depth (Alg. 1 stacking) parameter expansion")
    p.usage = ("batray expand [SRC DST] [--hidden-size H] [--intermediate-size F] [--num-heads N] "
               "[--num-kv-heads K] [--num-layers L] [--method fpi|exact] [--stack copy|zero] [--seed S] "
               "[--config FILE] [key.sub=value ...]")
    for flag, (field, kind) in FLAGS.items():
        choices = {"--method": ["fpi", "exact"], "--stack": ["copy", "zero"]}.get(flag)
        p.add_argument(flag, dest=field, type=kind, default=None, choices=choices)
    p.add_argument("--no-probe", action="store_true", help="skip the logit-deviation probe")
    return p


def default_src(cfg: RecipeConfig) -> str:
    for stage in ("grow", "pretrain"):
        candidate = Path(cfg.stage_dir(stage)) / "final"
        if is_complete(candidate):
            return str(candidate)
    raise BatrayError("expand: no source checkpoint; pass SRC or set expand.src "
                      f"(looked for {cfg.stage_dir('grow')}/final and {cfg.stage_dir('pretrain')}/final)")


def ray_shard_runner(num_cpus: float = 1.0):
    """`run_shards` for `expand_checkpoint`: one Ray task per output shard, progress logged as they finish."""
    import ray

    from batray.expansion import write_shard

    task = ray.remote(num_cpus=num_cpus, max_retries=2)(write_shard)

    def run(plan: ExpansionPlan, out_dir: str) -> list[dict]:
        plan_ref = ray.put(plan)
        pending = [task.remote(plan_ref, i, out_dir) for i in range(len(plan.shards))]
        done: list[dict] = []
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            done.extend(ray.get(ready))
            log.info("expand: shard %d/%d written (%s, %.1f MB)", len(done), len(plan.shards),
                     done[-1]["name"], done[-1]["bytes"] / 1e6)
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


def run_expand(cfg: RecipeConfig, src: str | None = None, dst: str | None = None, *, probe: bool | None = None,
               use_ray: bool = True) -> dict:
    """Expand per `cfg.expand`; returns the report (also in DST/expansion.json)."""
    ecfg = cfg.expand
    src = src or ecfg.src or default_src(cfg)
    dst = dst or ecfg.dst or str(Path(cfg.stage_dir("expand")) / "final")
    request = Request.from_config(ecfg)
    if is_complete(dst) and same_request(Path(dst) / REPORT, src, request):
        log.info("expand: %s is already this expansion of %s; skipping", dst, src)
        return json.loads((Path(dst) / REPORT).read_text())
    # Validate (and lay out) before anything starts: a bad request fails here, nothing written.
    plan = plan_expansion(src, request, max_shard_bytes=int(ecfg.max_shard_mb * 2**20))
    kwargs = {"plan": plan}
    if use_ray:
        init_ray(cfg)
        kwargs["run_shards"] = ray_shard_runner()
    return expand(src, dst, request, probe=ecfg.probe if probe is None else probe, probe_tokens=ecfg.probe_tokens,
                  config_hash=cfg.digest(), **kwargs)


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


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_intermixed_args(argv)
    # SRC and DST are the positionals without '='; the rest are key.sub=value overrides.
    paths = [a for a in args.overrides if "=" not in a]
    args.overrides = [a for a in args.overrides if "=" in a]
    if len(paths) > 2:
        raise BatrayError(f"expand takes at most SRC and DST, got {len(paths)} paths: {' '.join(paths)}")
    for flag, (field, _) in FLAGS.items():
        value = getattr(args, field)
        if value is not None:
            args.overrides.append(f"expand.{field}={value}")
    if args.no_probe:
        args.overrides.append("expand.probe=false")
    setup_logging()
    cfg = resolve(args)
    src = paths[0] if paths else None
    dst = paths[1] if len(paths) > 1 else None
    report = run_expand(cfg, src, dst)
    print(format_report(report, dst or cfg.expand.dst or str(Path(cfg.stage_dir("expand")) / "final")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
