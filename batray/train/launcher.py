"""Run a `TrainTask` as a Ray Train `TorchTrainer` (V2 API), or in this process (`scaling.launch:
in_process`, `batray.train.in_process`), with resume and skip-when-done.

Ray Train's checkpoints live under `<out_dir>/ray/` (`RunConfig(storage_path=<out_dir>, name="ray")`).
Resuming is rebuilding the same trainer with the same storage path and name: Ray Train V2 restores its
checkpoint manager from storage, and `ray.train.get_checkpoint()` hands the workers the latest one. An
in-process launch keeps its own in `<out_dir>/checkpoints/`. A folder whose `final/` is complete
(`batray.checkpoint.is_complete`) is not trained again.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path

from batray import hooks
from batray.checkpoint import is_complete
from batray.config.base import TrainConfig
from batray.errors import BatrayError
from batray.ray_session import init_ray, ray_data_output
from batray.trackers import TrackerSpec, open_trackers
from batray.train.loop import JobSpec, train_loop
from batray.train.memory_data import MemoryDataset
from batray.train.monitor import StageMonitor
from batray.train.task import TrainTask

log = logging.getLogger(__name__)

RAY_RUN_NAME = "ray"


class TrainingFailed(BatrayError):
    """A training run stopped with an error; its checkpoints stay, the same command resumes it."""


def fit(task: TrainTask, train_cfg: TrainConfig, out_dir: str, *, datasets: dict, seed: int = 0,
        recipe=None) -> str:
    """Train `task` on `datasets` ("train", optional "eval") into `out_dir`.

    A dataset is a Ray Data dataset (streamed, split across workers by Ray Train) or a
    `batray.train.memory_data.MemoryDataset` (rows the driver holds, read from the object store, or in place).

    Returns `<out_dir>/final`. Skips when it is already complete; resumes from `<out_dir>/ray/` (in-process:
    `<out_dir>/checkpoints/`) when a previous run left checkpoints there. recipe: the whole resolved
    `RecipeConfig`; its `logging` section chooses the trackers (which get the whole config as parameters) and
    the progress display. `train_cfg.scaling.launch` chooses a Ray Train job or this process.
    """
    if "://" in out_dir:
        raise BatrayError(f"{task.stage}: out_dir {out_dir!r}: training writes its folder locally (or on a shared mount)")
    out = Path(out_dir).absolute()
    final = out / "final"
    if is_complete(final):
        log.info("%s: %s is complete, skipping", task.stage, final)
        return str(final)
    out.mkdir(parents=True, exist_ok=True)
    scaling = train_cfg.scaling
    check_launch_matches(task.stage, out, scaling.launch)
    in_process = scaling.launch == "in_process"
    logging_cfg = recipe.logging if recipe is not None else None
    spec = TrackerSpec.of(recipe, task.stage, str(out)) if recipe is not None else None
    memory = {k: v for k, v in datasets.items() if isinstance(v, MemoryDataset)}
    streamed = {k: v for k, v in datasets.items() if k not in memory}
    if not in_process:
        init_ray(recipe)  # (quiets Ray Data's output too) an in-process stage of rows in memory needs no cluster
        memory = {k: v.in_object_store() for k, v in memory.items()}
    elif streamed:
        ray_data_output(logging_cfg)
    if streamed:
        from ray.data import DataContext

        # A deterministic stream is what makes skip-to-position exact on resume.
        DataContext.get_current().execution_options.preserve_order = True
    monitor = StageMonitor(task.stage, train_cfg.max_steps, trackers=open_trackers(spec), in_process=in_process,
                           mode=logging_cfg.progress if logging_cfg is not None else "auto")
    job = JobSpec(task=task, train=train_cfg, out_dir=str(out), seed=seed, has_eval="eval" in datasets,
                  hooks=hooks.carried(), memory_data=memory, channel=monitor.channel,
                  tensorboard=logging_cfg is None or "tensorboard" in logging_cfg.report_to)
    (_train_here if in_process else _train_on_ray_train)(job, monitor, streamed)
    if not is_complete(final):
        raise TrainingFailed(f"{task.stage}: training ended without writing {final}")
    return str(final)


def _train_on_ray_train(job: JobSpec, monitor: StageMonitor, streamed: dict) -> None:
    """The job as a Ray Train `TorchTrainer` (checkpoints in `<out_dir>/ray/`)."""
    import ray
    import ray.train
    from ray.data import DataContext
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig

    from batray.train.backend import TorchProcessGroup
    from batray.train.ray_trainer import trainer_class

    train_cfg, out, stage = job.train, Path(job.out_dir), job.task.stage
    scaling = train_cfg.scaling
    resources = {"CPU": scaling.cpus_per_worker}
    if scaling.use_gpu:
        resources["GPU"] = 1
    data_config = {}
    if streamed:
        ingest = copy.deepcopy(DataContext.get_current().execution_options)
        data_config = {"dataset_config": DataConfig(datasets_to_split=[k for k in ("train",) if k in streamed],
                                                    execution_options=ingest)}
    # On a local cluster batray started: no runtime envs, no State API cleaner (`batray.train.ray_trainer`)
    trainer = trainer_class()(
        train_loop,
        # By reference: Ray Train's controller unpickles `train_loop_config`, and the job's classes would
        # make it import torch and transformers (seconds before the workers start); the workers `ray.get` it.
        train_loop_config={"job": ray.put(job)},
        scaling_config=ScalingConfig(num_workers=scaling.num_workers, use_gpu=scaling.use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchProcessGroup(backend="nccl" if scaling.use_gpu else "gloo", timeout_s=600),
        run_config=RunConfig(
            storage_path=str(out),
            name=RAY_RUN_NAME,
            checkpoint_config=CheckpointConfig(num_to_keep=train_cfg.keep_checkpoints),
            failure_config=FailureConfig(max_failures=0),
        ),
        datasets=streamed or None,
        **data_config,
    )
    resuming = (out / RAY_RUN_NAME).exists()
    log.info("%s: %s %d worker(s), ZeRO-%d, into %s", stage, "resuming" if resuming else "starting",
             scaling.num_workers, train_cfg.deepspeed.zero_stage, out)
    try:
        with monitor:
            trainer.fit()
    except ray.train.TrainingFailedError as e:
        cause = str(e).strip().splitlines()
        raise TrainingFailed(
            f"{stage} stopped: {cause[-1] if cause else type(e).__name__}; "
            f"rerun the same command to resume from the last checkpoint in {out / RAY_RUN_NAME}"
        ) from e


def _train_here(job: JobSpec, monitor: StageMonitor, streamed: dict) -> None:
    """The job's one worker in this process (`batray.train.in_process`; checkpoints in `<out_dir>/checkpoints/`)."""
    from batray.train.in_process import CHECKPOINTS, has_checkpoints, train_in_process

    train_cfg, out, stage = job.train, Path(job.out_dir), job.task.stage
    log.info("%s: %s in this process, ZeRO-%d, into %s", stage,
             "resuming" if has_checkpoints(str(out)) else "starting", train_cfg.deepspeed.zero_stage, out)
    try:
        with monitor:
            train_in_process(job, datasets=streamed, keep=train_cfg.keep_checkpoints,
                             threads=max(1, int(train_cfg.scaling.cpus_per_worker)), use_gpu=train_cfg.scaling.use_gpu)
    except BatrayError:
        raise
    except Exception as e:  # the loop's own error, one line as a Ray Train failure reads, and how to resume
        lines = str(e).strip().splitlines()
        raise TrainingFailed(f"{stage} stopped: {type(e).__name__}{': ' + lines[-1] if lines else ''}; rerun the "
                             f"same command to resume from the last checkpoint in {out / CHECKPOINTS}") from e


def check_launch_matches(stage: str, out: Path, launch: str) -> None:
    """A folder's checkpoints are resumed by the launch that wrote them (their layouts differ)."""
    from batray.train.in_process import CHECKPOINTS, has_checkpoints

    if launch == "in_process" and (out / RAY_RUN_NAME).exists():
        raise BatrayError(f"{stage}: {out / RAY_RUN_NAME} holds a Ray Train run's checkpoints; resume it with "
                          f"scaling.launch ray_train, or remove that folder to start again in-process")
    if launch == "ray_train" and has_checkpoints(str(out)):
        raise BatrayError(f"{stage}: {out / CHECKPOINTS} holds an in-process run's checkpoints; resume it with "
                          f"scaling.launch in_process, or remove that folder to start again on Ray Train")
