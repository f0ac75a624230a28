"""The whole-pipeline config and its loader: YAML file + `key.sub=value` overrides -> validated schema.

Every failure is a `ConfigError` whose one-line message starts with the offending key path.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import Field, ValidationError, model_validator

from batray.config.base import LoggingConfig, ModelConfig, OutputPath, PathField, RayConfig, Schema
from batray.config.rl import AnnotateConfig, LabelConfig, PairsConfig, PpoConfig, PrefsConfig, RewardConfig
from batray.config.serve_eval import EvalConfig, ServeConfig
from batray.config.stages import DataConfig, ExpandConfig, GrowConfig, PretrainConfig, SftConfig
from batray.errors import ConfigError

StageName = Literal["data", "grow", "pretrain", "expand", "sft", "pairs", "label", "prefs", "reward", "ppo", "eval"]
STAGES: tuple[str, ...] = get_args(StageName)  # the canonical order (`batray.stages` has what each one does)


class RecipeConfig(Schema):
    """The BatGPT recipe: every stage's settings plus the run directory they share."""

    run_dir: OutputPath = "runs/default"
    seed: int = 0
    stages: list[StageName] = Field(
        default=["data", "grow", "expand", "sft", "pairs", "label", "prefs", "reward", "ppo", "eval"],
        description="what `batray run` executes, in order",
    )
    ray: RayConfig = RayConfig()
    logging: LoggingConfig = LoggingConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    pretrain: PretrainConfig = PretrainConfig()
    grow: GrowConfig = GrowConfig()
    expand: ExpandConfig = ExpandConfig()
    sft: SftConfig = SftConfig()
    pairs: PairsConfig = PairsConfig()
    label: LabelConfig = LabelConfig()
    annotate: AnnotateConfig = AnnotateConfig()
    prefs: PrefsConfig = PrefsConfig()
    reward: RewardConfig = RewardConfig()
    ppo: PpoConfig = PpoConfig()
    eval: EvalConfig = EvalConfig()
    serve: ServeConfig = ServeConfig()

    @model_validator(mode="after")
    def _fits_local_cluster(self) -> "RecipeConfig":
        """Impossible placements fail now, not after an hour of pretraining."""
        if self.ray.address is None and self.ray.num_cpus is not None:
            cpus = self.ray.num_cpus
            for stage in ("pretrain", "sft", "reward"):
                scaling = getattr(self, stage).scaling
                need = scaling.num_workers * scaling.cpus_per_worker
                if need > cpus:
                    raise ValueError(
                        f"{stage}.scaling: {scaling.num_workers} workers x {scaling.cpus_per_worker} CPUs "
                        f"need {need:g} CPUs but ray.num_cpus is {cpus}"
                    )
                # Pretraining streams its corpus through Ray Data, whose read tasks need a CPU the workers
                # do not hold: with none left the job waits forever ("Cluster resources are not enough").
                if stage == "pretrain" and need >= cpus:
                    raise ValueError(
                        f"pretrain.scaling: {scaling.num_workers} workers x {scaling.cpus_per_worker} CPUs take all "
                        f"{cpus} CPUs of the local cluster; Ray Data's read tasks need one more (raise ray.num_cpus)"
                    )
            roles = [getattr(self.ppo, r) for r in ("policy", "critic", "reference", "reward", "rollout")]
            per_role = [r.num_actors * r.num_cpus for r in roles]
            need = max(per_role) if self.ppo.colocate else sum(per_role)
            if need > cpus:
                raise ValueError(
                    f"ppo: the roles need {need:g} CPUs ({'colocated' if self.ppo.colocate else 'separate'}) "
                    f"but ray.num_cpus is {cpus}"
                )
        return self

    def stage_dir(self, stage: str) -> str:
        return join_uri(self.run_dir, stage)

    def digest(self) -> str:
        """A short hash of the resolved config, stored in every checkpoint's batray.json.

        `logging` is left out: where metrics go does not change what a stage computes; nor does a training
        stage's `scaling.launch` (in-process and Ray Train train bit-identically: tests/test_in_process.py)."""
        dumped = self.model_dump(mode="json", exclude={"logging"})
        for section in dumped.values():
            if isinstance(section, dict) and isinstance(section.get("scaling"), dict):
                section["scaling"].pop("launch", None)
        blob = json.dumps(dumped, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def join_uri(base: str, *parts: str) -> str:
    """Join path parts onto a local path or a URI (s3://, gs://, ...) without mangling the scheme."""
    out = base.rstrip("/")
    for part in parts:
        out = f"{out}/{part.strip('/')}"
    return out


def parse_override(item: str) -> tuple[list[str], Any]:
    """`pretrain.optim.lr=3e-4` -> (["pretrain", "optim", "lr"], 0.0003); values are YAML scalars."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.sub=value")
    key, _, raw = item.partition("=")
    path = [p for p in key.strip().split(".")]
    if not key.strip() or any(not p for p in path):
        raise ConfigError(f"override {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return path, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for i, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            elif not isinstance(child, dict):
                raise ConfigError(f"{'.'.join(path[: i + 1])}: is a value, cannot set {'.'.join(path)}")
            node = child
        node[path[-1]] = value
    return data


def format_validation_error(err: ValidationError, source: str) -> str:
    """The first problem as one line: `key.path: what is wrong (got VALUE) [in FILE]`."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "<root>"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; `batray config show` lists every key)"
    elif "input" in first and first["type"] not in ("missing",) and not isinstance(first["input"], dict):
        msg = f"{msg} (got {first['input']!r})"
    more = len(err.errors()) - 1
    suffix = f" (+{more} more)" if more else ""
    return f"{loc}: {msg} [in {source}]{suffix}"


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | None = None) -> RecipeConfig:
    """Read a YAML recipe (or the defaults when path is None), apply overrides, validate."""
    data: dict = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        data = _read_yaml_with_base(Path(path), seen=())
    data = apply_overrides(data, overrides or [])
    try:
        cfg = RecipeConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
    return absolute_local_paths(cfg)


# Ray workers do not run in the driver's working directory (Ray Train V2 moves each training worker
# into its run folder; on a cluster they are other machines), so local paths are made absolute when
# the config is read, against the directory the command runs in. Which fields are paths is said by
# their type (`InputPath`, `OutputPath`): outputs always; inputs only when they exist here, so a hub
# name such as "org/model" or a URI is left as it is.


def absolute_local_paths(cfg: Schema) -> Schema:
    """A copy of `cfg` with every local path field made absolute (recursing into sections and lists)."""
    updates = {}
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        role = _path_role(field.annotation, field.metadata)
        if isinstance(value, Schema):
            new = absolute_local_paths(value)
        elif isinstance(value, list):
            new = [absolute_local_paths(v) if isinstance(v, Schema) else _absolute(v, role) for v in value]
        else:
            new = _absolute(value, role)
        if new is not value and new != value:
            updates[name] = new
    return cfg.model_copy(update=updates) if updates else cfg


def _absolute(value, role: str | None):
    if role is not None and isinstance(value, dict) and isinstance(value.get("path"), str):  # a DataSpec mapping
        return {**value, "path": _absolute(value["path"], role)}
    if role is None or not isinstance(value, str) or not value or "://" in value or os.path.isabs(value):
        return value
    if role == "output" or os.path.exists(value):
        return os.path.abspath(value)
    return value


def _path_role(annotation, metadata=()) -> str | None:
    """"input"/"output" when the field is (or contains, as Optional/list) an InputPath/OutputPath.
    Pydantic keeps a top-level Annotated's marks in `FieldInfo.metadata`, nested ones in the annotation."""
    marks = [m for m in (*metadata, *getattr(annotation, "__metadata__", ())) if isinstance(m, PathField)]
    if marks:
        return marks[0].role
    for arg in get_args(annotation):
        role = _path_role(arg)
        if role is not None:
            return role
    return None


def _read_yaml(p: Path) -> dict:
    source = str(p)
    if not p.is_file():
        raise ConfigError(f"config file {source!r} does not exist")
    try:
        loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"config file {source!r}{where}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {source!r}: the top level must be a mapping of keys")
    return loaded


def _read_yaml_with_base(p: Path, seen: tuple[Path, ...]) -> dict:
    """A file may start from another: `base: run.yaml` (relative to the file) is read first and the
    file's own keys are merged over it, so per-stage recipes state only what differs."""
    if p.resolve() in seen:
        raise ConfigError(f"config file {str(p)!r}: `base` chain loops back to itself")
    data = _read_yaml(p)
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"base: expected a file path [in {p}]")
    return deep_merge(_read_yaml_with_base(p.parent / base, seen + (p.resolve(),)), data)


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dump_config(cfg: RecipeConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)
