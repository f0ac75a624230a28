"""DeepSpeed engine and learning-rate schedule from a `TrainConfig`.

CPU: the process group is gloo (set up by Ray Train) and the optimizer is a plain `torch.optim.AdamW`
handed to `deepspeed.initialize` (DeepSpeed's fused/CPU Adam kernels need a compiler toolchain).
GPU: NCCL and, with `deepspeed.bf16`, bf16 weights. ZeRO stage 0-3 come from `deepspeed.zero_stage`.
"""

from __future__ import annotations

import contextlib
import math
import sys

import torch

from batray.config.base import DeepSpeedConfig, TrainConfig


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, schedule: str, min_lr_ratio: float) -> float:
    """Multiplier of the base LR after `step` optimizer steps: linear warmup, then cosine/linear/constant.

    Cosine decays from 1 to `min_lr_ratio` between the end of warmup and `max_steps`.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    if schedule == "linear":
        decay = 1.0 - progress
    else:
        decay = 0.5 * (1.0 + math.cos(math.pi * progress))
    return min_lr_ratio + (1.0 - min_lr_ratio) * decay


class WarmupCosine:
    """Picklable LR lambda (LambdaLR saves callable objects' __dict__ in its state_dict)."""

    def __init__(self, warmup_steps: int, max_steps: int, schedule: str, min_lr_ratio: float):
        self.warmup_steps, self.max_steps, self.schedule, self.min_lr_ratio = warmup_steps, max_steps, schedule, min_lr_ratio

    def __call__(self, step: int) -> float:
        return lr_factor(step, warmup_steps=self.warmup_steps, max_steps=self.max_steps, schedule=self.schedule,
                         min_lr_ratio=self.min_lr_ratio)


def deepspeed_config(tc: TrainConfig, use_gpu: bool) -> dict:
    """The DeepSpeed JSON config of a stage; the batch sizes are per worker (micro) and accumulation."""
    return deepspeed_json(tc.deepspeed, micro_batch_size=tc.micro_batch_size, grad_accum_steps=tc.grad_accum_steps,
                          grad_clip=tc.optim.grad_clip)


def deepspeed_json(ds: DeepSpeedConfig, *, micro_batch_size: int, grad_accum_steps: int, grad_clip: float) -> dict:
    """DeepSpeed's JSON config from our `DeepSpeedConfig` (shared by the Ray Train stages and PPO's trainers)."""
    zero: dict = {"stage": ds.zero_stage}
    if ds.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if ds.offload_optimizer and ds.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu"}
    if ds.offload_params and ds.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu"}
    config = {
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": grad_accum_steps,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,  # a torch optimizer is fine (and the only one on CPU)
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if grad_clip > 0:
        config["gradient_clipping"] = grad_clip
    if ds.bf16:
        config["bf16"] = {"enabled": True}
    return config


def import_deepspeed():
    """`deepspeed`, with its CPU shared-memory all-reduce op switched off before any engine starts.

    On the CPU accelerator, DeepSpeed's comm backend JIT-compiles `deepspeed_shm_comm` (a C++ build of
    ~50 s on 2 cores, cached per venv path under ~/.cache/torch_extensions) the first time a process
    group is wrapped. Only `inference_all_reduce` (DeepSpeed-Inference tensor parallelism) uses it; the
    training engine's collectives are torch.distributed's, which batray's training and PPO use. Marking
    the op incompatible makes DeepSpeed skip the build (its own check, `build_shm_op`); GPU accelerators
    have no such op, so nothing changes there. And DeepSpeed is imported without mlflow (`_without_module`).
    """
    with _without_module("mlflow"):
        import deepspeed
        import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False  # first access probes and caches the dict
    return deepspeed


@contextlib.contextmanager
def _without_module(name: str):
    """`import name` fails inside the block, unless it is imported already; sys.modules as before after.

    For `import deepspeed`: its autotuner (which batray does not run) imports mlflow when installed, 2.2 s of
    DeepSpeed's 2.6 s import on 2 cores, paid by every training worker and PPO trainer. batray's trackers
    log from the driver, so a worker never needs mlflow; DeepSpeed's autotuner then runs without it.
    """
    if name in sys.modules:
        yield
        return
    sys.modules[name] = None  # the import system raises ImportError for a None entry
    try:
        yield
    finally:
        if sys.modules.get(name, ...) is None:
            del sys.modules[name]


def build_engine(model: torch.nn.Module, tc: TrainConfig, use_gpu: bool):
    """(engine, optimizer, scheduler) with DeepSpeed wrapping the model, AdamW and the LR schedule."""
    deepspeed = import_deepspeed()

    optim = tc.optim
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name or name.endswith("bias") else decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]  # LoRA: no 1-d trainables; DeepSpeed drops empty groups
    optimizer = torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, WarmupCosine(optim.warmup_steps, tc.max_steps, optim.schedule, optim.min_lr_ratio)
    )
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=deepspeed_config(tc, use_gpu),
        dist_init_required=False,
    )
    return engine, optimizer, scheduler
