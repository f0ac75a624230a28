"""`batray run CONFIG`: every stage of the BatGPT recipe chained, then `report.html`.

Each stage writes under `<run_dir>/<stage>/` (DESIGN.md §2) and skips itself when its output is
complete, so a rerun continues where a killed run stopped. `--only STAGE` and `--from STAGE` select
stages; overrides apply as everywhere (`key.sub=value`). Stage inputs are found by convention in the
run directory, so a single stage can run on its own.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path

from batray.checkpoint import is_complete
from batray.config import STAGES, RecipeConfig, join_uri
from batray.errors import BatrayError
from jobs.common import init_ray, resolve, setup_logging, stage_parser

log = logging.getLogger("batray.run")


# --- where each stage's inputs come from -------------------------------------------------------

def final_dir(cfg: RecipeConfig, stage: str) -> str:
    return join_uri(cfg.run_dir, stage, "final")


def data_dir(cfg: RecipeConfig) -> str:
    return join_uri(cfg.run_dir, "data")


def base_model(cfg: RecipeConfig) -> str:
    """The checkpoint SFT starts from: the last of pretrain / grow / expand this recipe runs."""
    if cfg.sft.init_from:
        return cfg.sft.init_from
    for stage in ("expand", "grow", "pretrain"):
        if stage in cfg.stages or is_complete(final_dir(cfg, stage)):
            return final_dir(cfg, stage)
    if cfg.model.path:
        return cfg.model.path
    raise BatrayError("sft: no starting checkpoint; add pretrain or grow to `stages` or set sft.init_from")


def policy_model(cfg: RecipeConfig) -> str:
    return cfg.ppo.policy_init or final_dir(cfg, "sft")


def benchmarks_dir(cfg: RecipeConfig) -> str:
    return cfg.eval.data or cfg.data.benchmarks or join_uri(data_dir(cfg), "benchmarks")


# --- the stages ----------------------------------------------------------------------------------

def stage_data(cfg: RecipeConfig) -> dict:
    from batray.data.demo import generate_demo

    out = data_dir(cfg)
    manifest = Path(out) / "manifest.json"
    if manifest.is_file():
        return {"outputs": {"data": out}, "summary": {"skipped": "demo data already generated"}}
    paths = generate_demo(out, cfg.data.demo)
    counts = json.loads(manifest.read_text()).get("counts", {}) if manifest.is_file() else {}
    return {"outputs": {"data": out}, "summary": {"files": len(paths), **{k: v for k, v in counts.items()}}}


def stage_pretrain(cfg: RecipeConfig) -> dict:
    from jobs.pretrain import run_pretrain

    out = run_pretrain(cfg, cfg.stage_dir("pretrain"))
    return {"outputs": {"model": out}}


def stage_grow(cfg: RecipeConfig) -> dict:
    from jobs.grow import run_grow

    phases = run_grow(cfg, cfg.stage_dir("grow"))["phases"]
    return {
        "outputs": {"model": final_dir(cfg, "grow")},
        "summary": {p["phase"]: {k: p.get(k) for k in ("num_layers", "hidden_size", "steps", "final_loss", "expansion_deviation")}
                    for p in phases},
    }


def stage_expand(cfg: RecipeConfig) -> dict:
    from jobs.expand import run_expand

    report = run_expand(cfg)
    dev = report.get("deviation", {})
    return {
        "inputs": {"model": report.get("src")},
        "outputs": {"model": final_dir(cfg, "expand")},
        "summary": {"source": report.get("source"), "target": report.get("target"), "logit_deviation": dev},
    }


def stage_sft(cfg: RecipeConfig) -> dict:
    from jobs.sft import run_sft

    init = base_model(cfg)
    out = run_sft(cfg, cfg.stage_dir("sft"), init_from=init)
    return {"inputs": {"model": init}, "outputs": {"model": out}}


def stage_pairs(cfg: RecipeConfig) -> dict:
    from jobs.pairs import run_pairs

    model = cfg.pairs.model_a or final_dir(cfg, "sft")
    if cfg.pairs.model_b != "world":
        out = run_pairs(cfg, cfg.stage_dir("pairs"), model_a=model)
        return {"inputs": {"model": model}, "outputs": {"pairs": out}}
    # Response B from "another LLM" that knows the demo world, over a real local endpoint.
    from batray.feedback.world_judge import start_world_judge

    with start_world_judge(join_uri(data_dir(cfg), "world.json")) as handle:
        cfg_b = cfg.model_copy(update={"pairs": cfg.pairs.model_copy(update={"model_b": handle.url})})
        out = run_pairs(cfg_b, cfg.stage_dir("pairs"), model_a=model)
    return {"inputs": {"model_a": model, "model_b": "the demo world's reference answers (endpoint)"}, "outputs": {"pairs": out}}


def stage_label(cfg: RecipeConfig) -> dict:
    from jobs.label import run_label

    pairs = join_uri(cfg.stage_dir("pairs"), "pairs.parquet")
    out = run_label(cfg, cfg.stage_dir("label"), pairs=pairs)
    return {"inputs": {"pairs": pairs}, "outputs": {"ai_labels": out}}


def stage_prefs(cfg: RecipeConfig) -> dict:
    from jobs.prefs import run_prefs

    ai = join_uri(cfg.stage_dir("label"), "ai.parquet")
    human = cfg.prefs.human_labels or join_uri(cfg.stage_dir("annotate"), "human.parquet")
    human = human if Path(human).exists() or "://" in human else None
    out = run_prefs(cfg, cfg.stage_dir("prefs"), ai=ai, human=human)
    return {"inputs": {"ai": ai, "human": human or "(none exported)"}, "outputs": {"preferences": out}}


def stage_reward(cfg: RecipeConfig) -> dict:
    from jobs.reward import run_reward

    init = cfg.reward.init_from or final_dir(cfg, "sft")
    data = cfg.reward.data or join_uri(cfg.stage_dir("prefs"), "preferences.parquet")
    out = run_reward(cfg, cfg.stage_dir("reward"), init_from=init, data=data)
    return {"inputs": {"model": init, "preferences": data}, "outputs": {"model": out}}


def stage_ppo(cfg: RecipeConfig) -> dict:
    from jobs.ppo import run_ppo

    policy = policy_model(cfg)
    reward = cfg.ppo.reward_model or final_dir(cfg, "reward")
    prompts = cfg.ppo.prompts or cfg.data.prompts or join_uri(data_dir(cfg), "prompts.jsonl")
    corpus = cfg.ppo.ptx_data or cfg.data.corpus or join_uri(data_dir(cfg), "corpus.jsonl")
    out = run_ppo(cfg, cfg.stage_dir("ppo"), policy_init=policy, reward_model=reward, prompts=prompts, ptx_data=corpus)
    return {"inputs": {"policy": policy, "reward_model": reward, "prompts": prompts, "ptx_corpus": corpus},
            "outputs": {"model": out}}


def stage_eval(cfg: RecipeConfig) -> dict:
    from jobs.eval import run_eval

    models = {m.rstrip("/").split("/")[-2] if m.endswith("final") else m: m for m in cfg.eval.models}
    if not models:
        models = {s: final_dir(cfg, s) for s in ("sft", "ppo") if is_complete(final_dir(cfg, s))}
    if not models:
        raise BatrayError("eval: no models; finish sft/ppo first or set eval.models")
    result = run_eval(cfg, cfg.stage_dir("eval"), models=models, data_dir=benchmarks_dir(cfg))
    return {"inputs": {"models": models, "benchmarks": benchmarks_dir(cfg)}, "outputs": {"tables": result.get("tables")}}


STAGE_FUNCS: dict[str, Callable[[RecipeConfig], dict]] = {
    "data": stage_data,
    "pretrain": stage_pretrain,
    "grow": stage_grow,
    "expand": stage_expand,
    "sft": stage_sft,
    "pairs": stage_pairs,
    "label": stage_label,
    "prefs": stage_prefs,
    "reward": stage_reward,
    "ppo": stage_ppo,
    "eval": stage_eval,
}
assert set(STAGE_FUNCS) == set(STAGES)


# --- the driver ----------------------------------------------------------------------------------

def select_stages(cfg: RecipeConfig, only: list[str] | None, start: str | None) -> list[str]:
    stages = list(cfg.stages)
    for name in (only or []) + ([start] if start else []):
        if name not in stages:
            raise BatrayError(f"stage {name!r} is not in this recipe's stages ({', '.join(stages)})")
    if only:
        return [s for s in stages if s in only]
    if start:
        return stages[stages.index(start):]
    return stages


def load_state(run_dir: str) -> dict:
    p = Path(run_dir) / "run_state.json"
    return json.loads(p.read_text()) if p.is_file() else {"stages": {}}


def save_state(run_dir: str, state: dict) -> None:
    p = Path(run_dir) / "run_state.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    tmp.replace(p)


def run_recipe(cfg: RecipeConfig, only: list[str] | None = None, start: str | None = None,
               report: bool = True) -> dict:
    from rich.console import Console

    console = Console(stderr=True)
    stages = select_stages(cfg, only, start)
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.run_dir) / "config.yaml").write_text(__import__("batray.config", fromlist=["dump_config"]).dump_config(cfg))
    state = load_state(cfg.run_dir)
    state["config_hash"] = cfg.digest()
    init_ray(cfg)
    for i, stage in enumerate(stages, 1):
        console.rule(f"[bold]{i}/{len(stages)} {stage}")
        started = time.time()
        entry = state["stages"].setdefault(stage, {})
        previous = entry.get("seconds") if entry.get("status") == "done" else None
        entry["status"] = "running"
        save_state(cfg.run_dir, state)
        try:
            result = STAGE_FUNCS[stage](cfg)
        except BaseException:
            entry["status"] = "failed"
            entry["seconds"] = time.time() - started
            save_state(cfg.run_dir, state)
            raise
        elapsed = time.time() - started
        entry.update(result)
        # A finished stage skips itself on a rerun; the report keeps the time it took when it ran.
        entry["seconds"] = previous if previous is not None else elapsed
        entry["status"] = "done"
        save_state(cfg.run_dir, state)
        console.print(f"{stage}: done in {elapsed:.1f}s -> {result.get('outputs')}")
    if report:
        from batray.report import build_report

        path = build_report(cfg.run_dir, state)
        console.print(f"report: {path}")
        state["report"] = str(path)
    return state


def main(argv: list[str] | None = None) -> int:
    p = stage_parser("run", "the whole BatGPT recipe: every stage in `stages`, finished ones skipped")
    p.add_argument("--only", action="append", choices=STAGES, help="run just this stage (repeatable)")
    p.add_argument("--from", dest="start", choices=STAGES, help="run from this stage on")
    p.add_argument("--no-report", action="store_true")
    p.usage = "batray run [CONFIG | --config CONFIG] [--run-dir DIR] [--only STAGE] [--from STAGE] [key.sub=value ...]"
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
    run_recipe(cfg, only=args.only, start=args.start, report=not args.no_report)
    return 0
