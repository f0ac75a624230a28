"""One training worker in the stage's own process (`scaling.launch: in_process`): the same loop as a Ray Train
job (`batray.train.loop.run_training`), with checkpoints and resume, and none of Ray Train's processes.

A Ray Train launch on a local machine starts a controller, its helper actors and a worker process, and
each of them imports Ray Train, torch and transformers again before the first step (about 4-5x the time
of one fresh process that imports torch and transformers and builds the model, on 2 cores:
benchmarks/RESULTS.md). With one CPU worker there is nothing for Ray Train to place, split or gang-
schedule, so this launch trains where the command already is. What it keeps:

- checkpoints every `ckpt_every` steps, in `<out_dir>/checkpoints/step_<N>/` (written whole into a
  temporary folder, then renamed: a folder there is complete), the newest `keep_checkpoints` kept, and
  the same command resuming from the newest one exactly (same data position, optimizer, RNG);
- rows the driver holds (`MemoryDataset`) read in place; a Ray Data stream (the pretraining corpus)
  iterated here as a Ray Train worker iterates its shard;
- the progress display and trackers (`StageMonitor` with a plain channel), metrics.jsonl, final/.

What it gives up: a worker crash is the command's crash (Ray Train runs with `max_failures=0` anyway, so
both stop and the same command resumes), and it trains one worker. Checkpoints of one launch are not read
by the other: a folder with Ray Train's `ray/` is resumed by `launch: ray_train`, and the reverse.
"""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

CHECKPOINTS = "checkpoints"
_STEP_DIR = re.compile(r"^step_(\d{8})$")


class InProcessSession:
    """`batray.train.loop.RayTrainSession`'s interface for rank 0 of 1 in this process."""

    rank, world = 0, 1

    def __init__(self, out_dir: str, *, datasets: dict, keep: int, threads: int, use_gpu: bool):
        import torch

        self.dir = Path(out_dir) / CHECKPOINTS
        self.datasets, self.keep, self.threads = datasets, keep, threads
        for partial in self.dir.glob(".step_*.partial"):  # a save the last run did not finish
            shutil.rmtree(partial)
        self.device = torch.device("cuda", torch.cuda.current_device()) if use_gpu else torch.device("cpu")

    @contextlib.contextmanager
    def latest_checkpoint(self) -> Iterator[str | None]:
        steps = checkpoint_steps(self.dir)
        yield str(steps[-1]) if steps else None

    def save_checkpoint(self, ckpt_dir: str, step: int, metrics: dict) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self.dir / f"step_{step:08d}"
        partial = self.dir / f".{final.name}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(ckpt_dir, partial)
        if final.exists():  # the same step saved again after a resume: the new save replaces it
            shutil.rmtree(final)
        partial.rename(final)
        for old in checkpoint_steps(self.dir)[:-self.keep]:
            shutil.rmtree(old)

    def dataset_shard(self, name: str):
        return self.datasets[name]  # a Ray Data dataset: one worker reads all of it, in order


@contextlib.contextmanager
def process_group(use_gpu: bool) -> Iterator[None]:
    """A torch.distributed group of one for DeepSpeed's engine, on an in-memory store (no port). Made once and
    kept for the process's life: DeepSpeed caches the group it first sees, so a second stage in the same
    command (`batray run`) trains on the same one. A group the caller made is used as it is."""
    import torch.distributed as dist

    from batray.ray_session import environ

    # what a launcher sets for rank 0 of 1 (DeepSpeed's engine asserts LOCAL_RANK); the command's own values back after
    with environ({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"}):
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_gpu else "gloo", store=dist.HashStore(), rank=0, world_size=1)
        yield


def train_in_process(job, *, datasets: dict, keep: int, threads: int, use_gpu: bool) -> None:
    """Run `job` (a `batray.train.loop.JobSpec`) here; its checkpoints go to `<out_dir>/checkpoints/`."""
    import torch

    from batray.train.loop import run_training

    session = InProcessSession(job.out_dir, datasets=datasets, keep=keep, threads=threads, use_gpu=use_gpu)
    before = torch.get_num_threads()
    try:
        with process_group(use_gpu):
            run_training(job, session)
    finally:
        torch.set_num_threads(before)  # the loop set the stage's threads; the command's other work gets its own back


def checkpoint_steps(folder: Path) -> list[Path]:
    """The complete checkpoint folders, oldest first (the temporary folder of a cut save is not one)."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_dir() and _STEP_DIR.match(p.name))


def has_checkpoints(out_dir: str) -> bool:
    return bool(checkpoint_steps(Path(out_dir) / CHECKPOINTS))
