"""The stage registry: every stage of the recipe, its typed inputs, its outputs and what runs it.

`batray STAGE` and `batray run` resolve a stage's inputs here and nowhere else (`resolve`), so a stage
run alone and a stage run in the recipe read exactly the same things. An input names the config keys
that set it (the first one set wins) and, when they are all null, where its default comes from: the
output of an earlier stage, the demo world (the `data` stage), or `model.path`. A model input
defaults to the latest model-producing stage before the consumer in `stages` (else the latest one
complete on disk, else `model.path`): one rule for every stage that starts from a model.

`StagePlan` is one stage resolved: its inputs with where each came from, its outputs and whether it
is done, partly done (it will resume) or new; `batray run --dry-run` prints the plans.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from batray.checkpoint import is_complete
from batray.config import STAGES, RecipeConfig, join_uri
from batray.errors import BatrayError
from batray.models.hub import is_hub_id

InputKind = Literal["checkpoint", "data", "endpoint"]
Status = Literal["done", "partial", "new"]

# Stages whose output is a model (`outputs["model"]`), in the order a recipe runs them.
MODEL_STAGES = ("pretrain", "grow", "expand", "sft", "ppo")


@dataclass(frozen=True)
class Resolved:
    """An input's value and where it came from (`origin`, shown by `--dry-run`)."""

    value: Any
    origin: str
    stage: str | None = None  # the stage whose output this is (for "run `batray STAGE` first")
    unused: str | None = None  # why this input is not read in this configuration

    def describe(self) -> str:
        if self.unused:
            return f"(not used: {self.unused})"
        if self.value is None:
            return f"(none: {self.origin})"
        shown = self.value if not isinstance(self.value, list) else ", ".join(map(str, self.value)) or "[]"
        return f"{shown}  [{self.origin}]"


@dataclass(frozen=True)
class Input:
    """One input of a stage. `keys`: the config keys that set it; `default(cfg, stage)`: where it is when
    none is set; `unused(cfg)`: a reason it is not read in this configuration (None: it is read)."""

    name: str
    keys: tuple[str, ...]
    default: Callable[[RecipeConfig, str], Resolved]
    kind: InputKind = "data"
    unused: Callable[[RecipeConfig], str | None] = lambda cfg: None
    optional: bool = False  # may resolve to nothing (the stage does without it)


@dataclass(frozen=True)
class Stage:
    name: str
    paper: str
    does: str
    inputs: tuple[Input, ...]
    outputs: Callable[[RecipeConfig, str], dict[str, str]]  # (cfg, out_dir) -> {name: path}
    run: Callable[["StageCall"], dict]  # returns a summary for the run state and the report
    done: Callable[[dict[str, str]], bool] | None = None  # from the outputs; default: all present/complete
    # "train": it trains on Ray Train; "actors": it runs Ray actors (or Ray Data). Either way `run_stage` starts a
    # local cluster in the background first (with Ray Train's coordinator for "train"), while the stage reads its
    # data. A callable decides from the config (an in-process SFT needs no cluster).
    ray: Literal["train", "actors"] | Callable[[RecipeConfig], Literal["train", "actors"] | None] | None = None

    def ray_for(self, cfg: RecipeConfig) -> Literal["train", "actors"] | None:
        return self.ray(cfg) if callable(self.ray) else self.ray


@dataclass
class StagePlan:
    stage: Stage
    out_dir: str
    inputs: dict[str, Resolved]
    outputs: dict[str, str]
    status: Status

    def value(self, name: str):
        return self.inputs[name].value

    def lines(self) -> list[str]:
        width = max([len(n) for n in self.inputs] + [len(n) for n in self.outputs] + [6])
        paper = f" ({self.stage.paper})" if self.stage.paper else ""
        out = [f"{self.stage.name}{paper}: {self.stage.does}; {self.status}"]
        out += [f"  <- {name:<{width}} {r.describe()}" for name, r in self.inputs.items()]
        out += [f"  -> {name:<{width}} {path}" for name, path in self.outputs.items()]
        return out

    def as_dict(self) -> dict:
        return {"stage": self.stage.name, "status": self.status, "out_dir": self.out_dir,
                "inputs": {n: {"value": r.value, "origin": r.origin, "unused": r.unused} for n, r in self.inputs.items()},
                "outputs": dict(self.outputs)}


@dataclass
class StageCall:
    """What a stage's `run` receives: the config, its resolved plan and the actor classes."""

    cfg: RecipeConfig
    plan: StagePlan
    kit: Any  # batray.stages.kit.ActorKit

    def __getitem__(self, name: str):
        return self.plan.value(name)

    @property
    def out_dir(self) -> str:
        return self.plan.out_dir


REGISTRY: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    if stage.name not in STAGES:
        raise ValueError(f"stage {stage.name!r} is not one of the config's stages {STAGES}")
    REGISTRY[stage.name] = stage
    return stage


# ---- resolution ---------------------------------------------------------------------------------


def config_value(cfg: RecipeConfig, key: str):
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node


def resolve(cfg: RecipeConfig, name: str, *, out_dir: str | None = None) -> StagePlan:
    """Stage `name` resolved against `cfg`: every input's value and origin, the outputs, the status."""
    stage = stage_named(name)
    out_dir = out_dir or cfg.stage_dir(name)
    inputs = {}
    for inp in stage.inputs:
        reason = inp.unused(cfg)
        if reason is not None:
            inputs[inp.name] = Resolved(None, "", unused=reason)
            continue
        for key in inp.keys:
            value = config_value(cfg, key)
            if value not in (None, [], ""):
                inputs[inp.name] = Resolved(value, key)
                break
        else:
            inputs[inp.name] = inp.default(cfg, name)
    outputs = stage.outputs(cfg, out_dir)
    return StagePlan(stage, out_dir, inputs, outputs, _status(stage, out_dir, outputs))


def stage_named(name: str) -> Stage:
    from batray.stages import definitions  # noqa: F401  (registers every stage)

    if name not in REGISTRY:
        raise BatrayError(f"unknown stage {name!r}; one of {', '.join(REGISTRY)}")
    return REGISTRY[name]


def _status(stage: Stage, out_dir: str, outputs: dict[str, str]) -> Status:
    done = stage.done(outputs) if stage.done is not None else all(output_done(p) for p in outputs.values())
    if done:
        return "done"
    return "partial" if Path(out_dir).is_dir() and any(Path(out_dir).iterdir()) else "new"


def output_done(path: str) -> bool:
    """A file output exists; a folder output is a checkpoint whose batray.json says complete."""
    p = Path(path)
    return is_complete(p) if p.is_dir() else p.exists()


def check_inputs(plan: StagePlan) -> None:
    """Every input the stage reads is there (or is a hub id / URL the stage will open); else one line
    naming the input, where it was looked for and what to do."""
    stage = plan.stage.name
    keys = {i.name: i.keys for i in plan.stage.inputs}
    kinds = {i.name: i.kind for i in plan.stage.inputs}
    optional = {i.name: i.optional for i in plan.stage.inputs}
    for name, r in plan.inputs.items():
        if r.unused:
            continue
        setting = " or ".join(keys[name]) if keys[name] else "the config"
        if r.value is None:
            if optional[name]:
                continue
            raise BatrayError(f"{stage}: no {name} ({r.origin}); set {setting}")
        values = r.value if isinstance(r.value, list) else [r.value]
        for value in values:
            if not isinstance(value, str) or kinds[name] == "endpoint" or is_remote(value):
                continue
            if is_hub_id(value) or (kinds[name] == "checkpoint" and value in _presets()):
                continue  # a hub model or dataset id: opened (where a hub is reachable) by the stage
            if not os.path.exists(value):
                first = f"run `batray {r.stage}` first or " if r.stage else ""
                raise BatrayError(f"{stage}: {name} {value!r} does not exist ({r.origin}); {first}set {setting}")


def is_remote(value: str) -> bool:
    return "://" in value


def _presets() -> tuple[str, ...]:
    from batray.models.presets import PRESETS

    return tuple(PRESETS)


# ---- where defaults come from -------------------------------------------------------------------


def stage_outputs(cfg: RecipeConfig, stage: str) -> dict[str, str]:
    return stage_named(stage).outputs(cfg, cfg.stage_dir(stage))


def output_of(producer: str, output: str = "model") -> Callable[[RecipeConfig, str], Resolved]:
    def default(cfg: RecipeConfig, consumer: str) -> Resolved:
        return Resolved(stage_outputs(cfg, producer)[output], f"output of {producer}", stage=producer)

    return default


def demo_file(name: str) -> Callable[[RecipeConfig, str], Resolved]:
    """A file of the demo world under `<run_dir>/data/` (generated by the data stage when missing)."""

    def default(cfg: RecipeConfig, consumer: str) -> Resolved:
        return Resolved(join_uri(cfg.run_dir, "data", name), "demo world (data stage)", stage="data")

    return default


def latest_model(among: tuple[str, ...]) -> Callable[[RecipeConfig, str], Resolved]:
    """The output of the latest stage of `among` before the consumer in `stages`; else the latest of them
    complete on disk; else `model.path`."""

    def default(cfg: RecipeConfig, consumer: str) -> Resolved:
        order = list(cfg.stages)
        before = order[: order.index(consumer)] if consumer in order else order
        planned = [s for s in before if s in among]
        if planned:
            return output_of(planned[-1])(cfg, consumer)
        finished = [s for s in MODEL_STAGES if s in among and is_complete(stage_outputs(cfg, s)["model"])]
        if finished:
            r = output_of(finished[-1])(cfg, consumer)
            return Resolved(r.value, f"{r.origin}, complete on disk", stage=r.stage)
        if cfg.model.path:
            return Resolved(cfg.model.path, "model.path")
        return Resolved(None, f"none of {', '.join(among)} is in `stages` or finished, and model.path is null")

    return default


def produced_or_found(producer: str, output: str) -> Callable[[RecipeConfig, str], Resolved]:
    """An optional input: the producer's output when the recipe runs it or it exists, else nothing."""

    def default(cfg: RecipeConfig, consumer: str) -> Resolved:
        r = output_of(producer, output)(cfg, consumer)
        if producer in cfg.stages or os.path.exists(r.value):
            return r
        return Resolved(None, f"{producer} is not in `stages` and {r.value} does not exist")

    return default


@dataclass
class StageResult:
    plan: StagePlan
    summary: dict = field(default_factory=dict)
