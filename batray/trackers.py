"""Experiment trackers beside `metrics.jsonl`: Weights & Biases and MLflow (`logging.report_to`).

TensorBoard is written by `batray.metrics.MetricsLogger` itself (on training rank 0, `<stage>/tb/`).
wandb and mlflow run in the driver: a stage opens one tracker run per stage (`open_trackers`), logs
the whole resolved config as the run's parameters, and `Trackers.log(row)` sends every row that went
to `metrics.jsonl` (for Ray Train stages the rows reach the driver from rank 0 through
`batray.train.monitor`; PPO's driver logs its own rows), so a run is logged once whatever the number
of workers. A resumed stage continues the same tracker runs (their ids are kept in
`<stage>/trackers.json`). `batray run` groups its stages: wandb `group`, and in MLflow a parent run
named after the group with each stage as a child run.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from batray.errors import ConfigError

log = logging.getLogger("batray.trackers")

EXTRA = {"wandb": ("wandb", "wandb"), "mlflow": ("mlflow", "mlflow")}  # tracker -> (module, pip extra)
IDS_FILE = "trackers.json"


def installed(module: str) -> bool:
    if module in sys.modules:  # None there means "not importable" (how tests and tools block a package)
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def check_trackers(report_to) -> None:
    """One line naming the extra to install when a tracker's package is missing (at config/stage start)."""
    for name in report_to:
        if name in EXTRA and not installed(EXTRA[name][0]):
            raise ConfigError(f"logging.report_to: {name} is not installed; pip install 'batray[{EXTRA[name][1]}]' "
                              f"(or drop {name} from logging.report_to)")


def in_run_group(cfg):
    """The recipe config with `logging.group` set (`<run_dir name>-<config hash>` unless chosen): what
    `batray run` hands every stage, so their tracker runs share one group."""
    if cfg.logging.group is not None:
        return cfg
    group = f"{Path(cfg.run_dir).name}-{cfg.digest()[:8]}"
    return cfg.model_copy(update={"logging": cfg.logging.model_copy(update={"group": group})})


@dataclass
class TrackerSpec:
    """What one stage's tracker runs are: resolved in the driver from the recipe config."""

    stage: str
    out_dir: str  # the stage folder: wandb's files (unless WANDB_DIR is set) and trackers.json
    report_to: tuple[str, ...]
    project: str
    run_name: str
    group: str | None
    tags: list[str]
    config: dict  # the whole resolved config (`RecipeConfig.model_dump(mode="json")`)
    entity: str | None = None
    mlflow_tracking_uri: str | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def of(cls, cfg, stage: str, out_dir: str) -> "TrackerSpec":
        lc = cfg.logging
        check_trackers(lc.report_to)
        run_name = lc.run_name or f"{Path(cfg.run_dir).name}-{stage}"
        uri = lc.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if uri is None and "mlflow" in lc.report_to:
            if "://" in cfg.run_dir:
                raise ConfigError("logging.mlflow_tracking_uri: set it (the default file store needs a local run_dir)")
            uri = Path(cfg.run_dir, "mlruns").absolute().as_uri()
        return cls(stage=stage, out_dir=str(out_dir), report_to=tuple(lc.report_to), project=lc.project,
                   run_name=run_name, group=lc.group, tags=[stage, f"config:{cfg.digest()}", *lc.tags],
                   config=cfg.model_dump(mode="json"), entity=lc.entity, mlflow_tracking_uri=uri)

    @property
    def remote(self) -> tuple[str, ...]:
        """The trackers this module runs (TensorBoard is the metrics logger's)."""
        return tuple(t for t in self.report_to if t in EXTRA)


class Trackers:
    """The open tracker runs of one stage; `log(row)` takes a `metrics.jsonl` row (step, time, values)."""

    def __init__(self, spec: TrackerSpec, backends: list):
        self.spec, self._backends = spec, backends

    def log(self, row: dict) -> None:
        step = int(row["step"])
        values = {k: v for k, v in row.items() if k not in ("step", "time") and isinstance(v, (int, float))}
        for b in self._backends:
            b.log(step, values, row.get("time"))

    def close(self, failed: bool = False) -> None:
        for b in self._backends:
            try:
                b.close(failed)
            except Exception as e:  # noqa: BLE001 - a tracker's shutdown must not hide the stage's own outcome
                log.warning("%s: closing the %s run failed: %s", self.spec.stage, type(b).__name__, e)
        self._backends = []

    def __enter__(self) -> "Trackers":
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self.close(failed=exc_type is not None)


def open_trackers(spec: TrackerSpec | None) -> Trackers | None:
    """Start (or, for a resumed stage, continue) one run per tracker; None when none is configured."""
    if spec is None or not spec.remote:
        return None
    check_trackers(spec.remote)
    ids_path = Path(spec.out_dir, IDS_FILE)
    ids = json.loads(ids_path.read_text()) if ids_path.is_file() else {}
    backends = []
    try:
        for name in spec.remote:
            backends.append((_WandbRun if name == "wandb" else _MlflowRun)(spec, ids.get(name)))
            ids[name] = backends[-1].run_id
    except BaseException:
        Trackers(spec, backends).close(failed=True)
        raise
    ids_path.parent.mkdir(parents=True, exist_ok=True)
    ids_path.write_text(json.dumps(ids))
    return Trackers(spec, backends)


class _WandbRun:
    def __init__(self, spec: TrackerSpec, run_id: str | None):
        import wandb

        self.run = wandb.init(project=spec.project, entity=spec.entity, name=spec.run_name, group=spec.group,
                              tags=spec.tags, config=spec.config, dir=os.environ.get("WANDB_DIR") or spec.out_dir,
                              id=run_id, resume="allow" if run_id else None, job_type=spec.stage,
                              reinit="create_new")
        self.run_id = self.run.id

    def log(self, step: int, values: dict, _time) -> None:
        self.run.log(values, step=step)

    def close(self, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)


class _MlflowRun:
    """Through `MlflowClient` (no process-global active run): params, tags, metrics in batches."""

    def __init__(self, spec: TrackerSpec, run_id: str | None):
        uri = spec.mlflow_tracking_uri
        if uri and uri.startswith("file:"):  # mlflow 3 keeps the file store behind an explicit opt-in
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        from mlflow.tracking import MlflowClient

        self.client = c = MlflowClient(tracking_uri=uri)
        if run_id is not None:
            c.update_run(run_id, status="RUNNING")
            self.run_id = run_id
            return
        exp = c.get_experiment_by_name(spec.project)
        exp_id = exp.experiment_id if exp is not None else c.create_experiment(spec.project)
        tags = {"batray.stage": spec.stage, **{f"batray.tag.{t}": "1" for t in spec.tags}}
        if spec.group:
            tags["batray.group"] = spec.group
            tags["mlflow.parentRunId"] = self._parent(exp_id, spec.group)
        self.run_id = c.create_run(exp_id, run_name=spec.run_name, tags=tags).info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in sorted(flatten(spec.config).items())]
        for i in range(0, len(params), 100):  # mlflow takes at most 100 params per batch
            c.log_batch(self.run_id, params=params[i:i + 100])
        import yaml

        c.log_text(self.run_id, yaml.safe_dump(spec.config, sort_keys=False, allow_unicode=True), "config.yaml")

    def _parent(self, exp_id: str, group: str) -> str:
        """The group's parent run (one per group, found by tag; created by the first stage that needs it)."""
        found = self.client.search_runs([exp_id], filter_string=f"tags.`batray.group_parent` = '{group}'",
                                        max_results=1)
        if found:
            return found[0].info.run_id
        run = self.client.create_run(exp_id, run_name=group, tags={"batray.group_parent": group})
        self.client.set_terminated(run.info.run_id)
        return run.info.run_id

    def log(self, step: int, values: dict, t) -> None:
        from mlflow.entities import Metric

        ms = int((t or time.time()) * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, float(v), ms, step) for k, v in values.items()])

    def close(self, failed: bool) -> None:
        self.client.set_terminated(self.run_id, status="FAILED" if failed else "FINISHED")


def flatten(d: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out
