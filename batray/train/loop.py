"""The training loop every training stage runs on each worker: Ray Train's `train_loop_per_worker`, or the
stage's own process with `scaling.launch: in_process` (`batray.train.in_process`).

One screen of logic (nanoGPT style), with Ray Train (or its in-process stand-in, a `session`) around it:
  build model -> DeepSpeed engine -> restore the last checkpoint (model, optimizer, scheduler, data
  position, RNG) -> for each micro batch of this worker's Ray Data shard: loss, backward, step at
  accumulation boundaries -> every `log_every` steps: metrics summed over workers, `metrics.jsonl` +
  TensorBoard (rank 0), the row and each step's count sent to the driver's progress display and trackers
  (`batray.train.monitor`) -> every `eval_every` steps: the held-out split -> every
  `ckpt_every` steps: a checkpoint (`session.save_checkpoint`) -> at the end: the final HF folder.

Data position: Ray Data cannot seek, so a resumed worker re-reads its shard's current epoch and
skips the micro batches it already trained on. The stream is deterministic (Train's split runs with
`preserve_order`, equal row counts per worker), so the skipped batches are exactly the trained ones.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import random
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from batray import hooks
from batray.config.base import TrainConfig
from batray.train.task import TrainTask

ENGINE_TAG = "engine"
STATE_FILE = "train_state.json"


@dataclass
class JobSpec:
    """Everything a worker needs; `train_loop_config["job"]` is its object-store reference."""

    task: TrainTask
    train: TrainConfig
    out_dir: str  # metrics.jsonl, tb/ and final/ go here (rank 0 writes; a local or shared path)
    seed: int = 0
    has_eval: bool = False
    hooks: list = field(default_factory=list)  # the driver's `batray.hooks.carried()` (tests inject faults)
    memory_data: dict = field(default_factory=dict)  # name -> `MemoryDataset`, instead of a Ray Data dataset
    channel: object = None  # a `ProgressChannel` actor: rank 0 reports steps and rows to the driver
    tensorboard: bool = True  # `logging.report_to` has tensorboard


@dataclass
class TrainState:
    step: int = 0  # optimizer steps done
    epoch: int = 0
    consumed: int = 0  # micro batches of the current epoch already trained on (this worker)
    tokens_seen: int = 0  # all workers together
    extra: dict = field(default_factory=dict)


class RayTrainSession:
    """What the loop needs from Ray Train on a worker: rank, device, the latest checkpoint, reporting one,
    the worker's Ray Data shard. `batray.train.in_process.InProcessSession` is the same for one worker
    in the stage's own process."""

    def __init__(self):
        import ray.train
        import ray.train.torch

        ctx = ray.train.get_context()
        self.rank, self.world = ctx.get_world_rank(), ctx.get_world_size()
        self.device = ray.train.torch.get_device()
        self.threads = max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))  # Ray sets it to the worker's CPUs

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as ckpt_dir:
            yield ckpt_dir

    def save_checkpoint(self, ckpt_dir: str, step: int, metrics: dict) -> None:
        """Hand this worker's checkpoint folder to Ray Train (it merges the workers' folders into storage)."""
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(ckpt_dir),
                         checkpoint_dir_name=f"step_{step:08d}")

    def dataset_shard(self, name: str):
        import ray.train

        return ray.train.get_dataset_shard(name)


def train_loop(config: dict) -> None:
    """Ray Train's `train_loop_per_worker`."""
    import ray

    job: JobSpec = ray.get(config["job"])
    hooks.install(job.hooks)
    run_training(job, RayTrainSession())


def run_training(job: JobSpec, session) -> None:
    """The loop, on one worker of `session` (a `RayTrainSession` or an `InProcessSession`)."""
    task, tc = job.task, job.train
    rank, world, device = session.rank, session.world, session.device
    use_gpu = device.type == "cuda"
    torch.set_num_threads(session.threads)

    # Start this worker's data stream now: Ray Data's start-up (its coordinator and read/tokenize
    # tasks, process starts and imports) then overlaps the model build below instead of following it.
    batches = EpochBatches(dataset_shard(job, session, "train"), tc.micro_batch_size)
    model = task.build_model()
    seed_everything(job.seed + rank)  # after build: dropout/noise streams differ per rank
    from batray.train.engine import build_engine

    engine, _, scheduler = build_engine(model, tc, use_gpu)

    state = TrainState()
    resumed = False
    with session.latest_checkpoint() as ckpt_dir:
        if ckpt_dir is not None:
            state = load_state(engine, ckpt_dir, rank)
            resumed = True

    logger = None
    if rank == 0:
        from batray.metrics import MetricsLogger

        logger = MetricsLogger(job.out_dir, resume_step=state.step + 1 if resumed else None,
                               tensorboard=job.tensorboard)
        if resumed:
            print(f"[{task.stage}] resumed at step {state.step} (epoch {state.epoch}, batch {state.consumed})", flush=True)
    report = Reporter(job.channel if rank == 0 else None)
    report("start", step=state.step)

    window: dict[str, float] = {}
    window_tokens, window_start = 0, time.perf_counter()
    micro = 0
    gas = tc.grad_accum_steps
    engine.train()

    def log_and_checkpoint() -> None:
        nonlocal window, window_tokens, window_start
        step, last = state.step, state.step == tc.max_steps
        do_log = step % tc.log_every == 0 or last
        do_eval = job.has_eval and (step % tc.eval_every == 0 or last)
        if do_log or do_eval:
            sums = all_reduce_sum({**window, "__tokens": float(window_tokens)}, device)
            tokens = sums.pop("__tokens")
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            metrics = task.metrics(sums)
            metrics["lr"] = scheduler.get_last_lr()[0]
            grad_norm = engine.get_global_grad_norm()
            if grad_norm is not None:
                metrics["grad_norm"] = float(grad_norm)
            metrics["tokens_per_s"] = tokens / elapsed
            metrics["tokens_seen"] = state.tokens_seen
            if do_eval:
                metrics.update(evaluate(engine, task, tc, device, dataset_shard(job, session, "eval", whole=True)))
                engine.train()
            if logger is not None:
                report("metrics", **logger.log(step, **metrics))
            window, window_tokens, window_start = {}, 0, time.perf_counter()
        if step % tc.ckpt_every == 0 and not last:
            save_checkpoint(engine, state, session, {"step": step})
            window_start = time.perf_counter()  # checkpoint time is not training throughput

    while state.step < tc.max_steps:
        hooks.fire(hooks.TRAIN_BEFORE_STEP, stage=task.stage, step=state.step + 1, resumed=resumed)
        seen = 0
        for np_batch in batches.next_epoch():
            seen += 1
            if seen <= state.consumed:  # already trained on before the restart
                continue
            if micro == 0:
                window_start = time.perf_counter()  # throughput excludes startup and data warm-up
            batch = task.to_device(np_batch, device)
            boundary = (micro + 1) % gas == 0
            engine.set_gradient_accumulation_boundary(boundary)
            loss, stats = task.loss(engine, batch)
            engine.backward(loss)
            engine.step()
            micro += 1
            state.consumed = seen
            n_tokens = task.num_tokens(batch)
            window_tokens += n_tokens
            for k, v in stats.items():
                window[k] = window.get(k, 0.0) + float(v)
            if boundary:
                state.step += 1
                state.tokens_seen += n_tokens * world * gas  # every worker saw a batch of this shape
                report("step", step=state.step)
                log_and_checkpoint()
                if state.step >= tc.max_steps:
                    break
                hooks.fire(hooks.TRAIN_BEFORE_STEP, stage=task.stage, step=state.step + 1, resumed=resumed)
        else:
            if seen == 0:
                raise RuntimeError(
                    f"[{task.stage}] a worker's data shard has no full micro batch of {tc.micro_batch_size}; "
                    "use more data, fewer workers or a smaller micro_batch_size"
                )
            state.epoch += 1
            state.consumed = 0

    save_final(engine, task, tc, job, state, rank)
    if logger is not None:
        logger.close()


class EpochBatches:
    """A worker's Ray Data shard as numpy micro batches, one epoch per `next_epoch()`.

    The first epoch is started in a background thread at construction: the thread waits for the
    first batch (blocking on remote work, so it holds no GIL while the model is built) and the loop
    then continues from that same iterator. Later epochs start on demand.
    """

    def __init__(self, shard, batch_size: int):
        self._shard, self._batch_size = shard, batch_size
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="batray-data-prime")
        self._first_epoch: Future | None = pool.submit(self._started)
        pool.shutdown(wait=False)

    def _iter(self) -> Iterator[dict[str, np.ndarray]]:
        return iter(self._shard.iter_batches(batch_size=self._batch_size, drop_last=True, batch_format="numpy",
                                             prefetch_batches=2))

    def _started(self) -> Iterator[dict[str, np.ndarray]]:
        it = self._iter()
        first = next(it, None)
        return it if first is None else itertools.chain([first], it)

    def next_epoch(self) -> Iterator[dict[str, np.ndarray]]:
        if self._first_epoch is None:
            return self._iter()
        first, self._first_epoch = self._first_epoch, None
        return first.result()  # re-raises a failure of the data stream here, in the training thread


def dataset_shard(job: JobSpec, session, name: str, *, whole: bool = False):
    """This worker's share of dataset `name` (`whole`: all of it, as every worker reads the held-out split):
    a `MemoryDataset`'s rows, else the session's Ray Data shard."""
    if name in job.memory_data:
        return job.memory_data[name].shard(0, 1) if whole else job.memory_data[name].shard(session.rank, session.world)
    return session.dataset_shard(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def all_reduce_sum(values: dict[str, float], device: torch.device) -> dict[str, float]:
    """Sum named floats over all workers (one collective), keys in a fixed order on every rank."""
    import torch.distributed as dist

    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return dict(zip(keys, t.tolist()))


@torch.no_grad()
def evaluate(engine, task: TrainTask, tc: TrainConfig, device: torch.device, eval_ds) -> dict[str, float]:
    """Metrics on the held-out split, prefixed `eval_`. Every worker runs the same (unsplit) batches,
    which ZeRO-3 needs anyway (its forward gathers parameters collectively)."""
    engine.eval()
    sums: dict[str, float] = {}
    for i, np_batch in enumerate(eval_ds.iter_batches(batch_size=tc.micro_batch_size, batch_format="numpy")):
        if i >= tc.eval_batches:
            break
        _, stats = task.loss(engine, task.to_device(np_batch, device))
        for k, v in stats.items():
            sums[k] = sums.get(k, 0.0) + float(v)
    return task.metrics(sums, prefix="eval_")


class Reporter:
    """Rank 0's messages to the driver's `StageMonitor`, sent without waiting (Ray keeps one caller's
    calls to an actor in order); other ranks, and a loop run without a channel, send nothing."""

    def __init__(self, channel):
        from batray.train.monitor import ProgressChannel

        # an actor handle (a Ray Train worker) or the driver's own `ProgressChannel` (in-process)
        self._push = None if channel is None else channel.push if isinstance(channel, ProgressChannel) \
            else channel.push.remote

    def __call__(self, kind: str, **message) -> None:
        if self._push is not None:
            self._push({"kind": kind, "t": time.time(), **message})


def save_checkpoint(engine, state: TrainState, session, metrics: dict) -> None:
    """A checkpoint through the session: DeepSpeed's model/optimizer/scheduler states (each rank writes its
    own ZeRO partition files; Ray Train merges the workers' folders), the data position and the per-rank
    RNG states."""
    rank = session.rank
    with tempfile.TemporaryDirectory() as tmp:
        # a LoRA model's checkpoint holds its adapter: the frozen base is the stage's unchanged input
        engine.save_checkpoint(tmp, tag=ENGINE_TAG, client_state={}, exclude_frozen_parameters=frozen_base(engine))
        torch.save(rng_state(), Path(tmp, f"rng_rank{rank}.pt"))
        Path(tmp, f"{STATE_FILE}.rank{rank}").write_text(json.dumps(asdict(state)))
        session.save_checkpoint(tmp, state.step, metrics)


def load_state(engine, ckpt_dir: str, rank: int) -> TrainState:
    engine.load_checkpoint(ckpt_dir, tag=ENGINE_TAG, load_optimizer_states=True, load_lr_scheduler_states=True,
                           load_module_strict=not frozen_base(engine))
    state_path = Path(ckpt_dir, f"{STATE_FILE}.rank{rank}")
    if not state_path.exists():
        raise RuntimeError(f"checkpoint {ckpt_dir} has no training state for rank {rank} (world size changed?)")
    state = TrainState(**json.loads(state_path.read_text()))
    set_rng_state(torch.load(Path(ckpt_dir, f"rng_rank{rank}.pt"), weights_only=False))
    return state


def frozen_base(engine) -> bool:
    from batray.models.lora import frozen_excluded

    return frozen_excluded(engine.module)


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(s: dict) -> None:
    random.setstate(s["python"])
    np.random.set_state(s["numpy"])
    torch.set_rng_state(s["torch"])


def save_final(engine, task: TrainTask, tc: TrainConfig, job: JobSpec, state: TrainState, rank: int) -> None:
    """Rank 0 writes the final HF folder; under ZeRO-3 every rank first gathers the full parameters."""
    import torch.distributed as dist

    final_dir = str(Path(job.out_dir, "final"))
    module = engine.module
    gathered = contextlib.nullcontext()
    if tc.deepspeed.zero_stage == 3:
        import deepspeed

        gathered = deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None)
    with gathered:
        if rank == 0:
            task.save_final(module, final_dir, step=state.step, tokens_seen=state.tokens_seen)
        hooks.fire(hooks.TRAIN_FINAL, stage=task.stage, rank=rank, model=module)
    if dist.is_initialized():
        dist.barrier()
