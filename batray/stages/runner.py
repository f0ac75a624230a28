"""Running stages: one stage (`batray STAGE`) or the recipe (`batray run`), both through the registry.

`run_stage` resolves the stage's plan, generates the demo world first when an input comes from it and
it is missing, checks every input (one line naming what is missing and how to get it), and calls the
stage. `run_recipe` runs the selected stages in order, records each one's plan, time and summary in
`<run_dir>/run_state.json`, measures every stage's claim on held-out data (`batray.measure`) and writes
the report (`report.html`, `report.json`). `format_plan` is what `--dry-run` prints.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from batray.config import RecipeConfig, dump_config
from batray.errors import BatrayError
from batray.ray_session import finish_early_start, start_ray_early
from batray.stages.kit import ActorKit
from batray.stages.registry import StageCall, StagePlan, StageResult, check_inputs, resolve
from batray.trackers import check_trackers, in_run_group

log = logging.getLogger("batray.run")


def run_stage(cfg: RecipeConfig, name: str, kit: ActorKit, *, out_dir: str | None = None) -> StageResult:
    check_trackers(cfg.logging.report_to)  # a missing wandb/mlflow is one line now, not after the data work
    plan = resolve(cfg, name, out_dir=out_dir)
    if any(r.stage == "data" and isinstance(r.value, str) and not os.path.exists(r.value)
           for r in plan.inputs.values() if not r.unused):
        data = resolve(cfg, "data")
        if data.status != "done":
            log.info("%s: no data configured: generating the demo world into %s", name, data.out_dir)
            data.stage.run(StageCall(cfg, data, kit))
    check_inputs(plan)
    cluster_started = False
    ray_use = plan.stage.ray_for(cfg)
    if ray_use and plan.status != "done":  # a local cluster starts while the stage reads its data
        cluster_started = start_ray_early(cfg, train=ray_use == "train")
    try:
        summary = plan.stage.run(StageCall(cfg, plan, kit)) or {}
    finally:
        if cluster_started:  # a stage that stopped before `init_ray`: the start is waited for, the env restored
            finish_early_start()
    return StageResult(resolve(cfg, name, out_dir=out_dir), summary)


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


def plan_recipe(cfg: RecipeConfig, stages: list[str]) -> list[StagePlan]:
    return [resolve(cfg, s) for s in stages]


def format_plan(cfg: RecipeConfig, plans: list[StagePlan]) -> str:
    lines = [f"run_dir {cfg.run_dir}, config hash {cfg.digest()}, {len(plans)} stage(s)"]
    for i, plan in enumerate(plans, 1):
        first, *rest = plan.lines()
        lines.append(f"{i:>2}. {first}")
        lines += [f"    {line}" for line in rest]
    return "\n".join(lines)


def load_state(run_dir: str) -> dict:
    p = Path(run_dir) / "run_state.json"
    return json.loads(p.read_text()) if p.is_file() else {"stages": {}}


def save_state(run_dir: str, state: dict) -> None:
    p = Path(run_dir) / "run_state.json"
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(state, indent=2, default=str))
    tmp.replace(p)


def run_recipe(cfg: RecipeConfig, kit: ActorKit, *, only: list[str] | None = None, start: str | None = None,
               report: bool = True) -> dict:
    """Every selected stage in order (a finished one skips itself, a partial one resumes), then the report."""
    from rich.console import Console

    console = Console(stderr=True)
    check_trackers(cfg.logging.report_to)
    cfg = in_run_group(cfg)  # one tracker group for the recipe's stages
    stages = select_stages(cfg, only, start)
    Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
    (Path(cfg.run_dir) / "config.yaml").write_text(dump_config(cfg))
    state = load_state(cfg.run_dir)
    state["config_hash"] = cfg.digest()
    # The local cluster starts now, in the background, while the first stages (the demo data, its tokenizer)
    # run; the first stage on Ray waits for it. A run whose stages are all done starts none.
    todo = [plan for plan in plan_recipe(cfg, stages) if plan.status != "done"]
    ray_uses = {plan.stage.ray_for(cfg) for plan in todo} - {None}
    cluster_started = bool(ray_uses) and start_ray_early(cfg, train="train" in ray_uses)
    try:
        _run_stages(cfg, kit, stages, state, console)
    finally:
        if cluster_started:  # no stage reached `init_ray` (all failed or skipped before it): wait, restore the env
            finish_early_start()
    if report:
        from batray.measure import measure_run
        from batray.report import build_report

        console.rule("[bold]measure: every stage's claim on held-out data")
        started = time.time()
        measurements = measure_run(cfg, kit)
        console.print(f"measured in {time.time() - started:.1f}s")
        path = build_report(cfg.run_dir, state, measurements)
        console.print(f"report: {path}")
        state["report"] = str(path)
    return state


def _run_stages(cfg: RecipeConfig, kit: ActorKit, stages: list[str], state: dict, console) -> None:
    """Each stage in order, its status, time and summary kept in `run_state.json` as it goes."""
    for i, stage in enumerate(stages, 1):
        console.rule(f"[bold]{i}/{len(stages)} {stage}")
        started = time.time()
        entry = state["stages"].setdefault(stage, {})
        previous = entry.get("seconds") if entry.get("status") == "done" else None
        entry["status"] = "running"
        save_state(cfg.run_dir, state)
        try:
            result = run_stage(cfg, stage, kit)
        except BaseException:
            entry["status"] = "failed"
            entry["seconds"] = time.time() - started
            save_state(cfg.run_dir, state)
            raise
        elapsed = time.time() - started
        plan = result.plan.as_dict()
        entry.update(inputs={n: v["value"] for n, v in plan["inputs"].items() if not v["unused"]},
                     outputs=plan["outputs"], summary=result.summary)
        # A finished stage skips itself on a rerun; the report keeps the time it took when it ran.
        entry["seconds"] = previous if previous is not None else elapsed
        entry["status"] = "done"
        save_state(cfg.run_dir, state)
        console.print(f"{stage}: done in {elapsed:.1f}s -> {plan['outputs']}")
