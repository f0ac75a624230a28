"""One PPO trainer rank (policy or critic): a model under a DeepSpeed engine, ZeRO stage 0-3.

The N ranks of a role share one torch.distributed group (gloo on CPU, NCCL on GPU) that the actors
join before this is built; DeepSpeed averages the gradients (stage 0), or shards the optimizer state
(1), the gradients (2) and the parameters (3) over it. On CPU the optimizer is a plain
`torch.optim.AdamW` handed to `deepspeed.initialize` (DeepSpeed's own Adam kernels need a compiler).

Gradient accumulation: the update loops (`batray.ppo.train`) scale each micro batch's loss themselves
and call `backward` per micro batch, then `step` once per minibatch. DeepSpeed is told the number of
micro batches per minibatch (`micro_steps`) and counts them itself (an engine step after each
backward), so its accumulation boundary, where ZeRO reduces the gradients and the optimizer steps,
is the last micro batch of each minibatch. DeepSpeed averages the gradients over the ranks; the
update loops scale each rank's loss by `world_size` where they want the sum (a loss normalized by the
token count of the whole minibatch, made global by `all_reduce_sum`).

Gradient norm: `step` returns the global norm of the minibatch's gradient before clipping. ZeRO 1-3
(and DeepSpeed's bf16 optimizer) compute it over the partitions themselves; at ZeRO 0 in fp32 the
optimizer is the plain torch one and DeepSpeed reports none, so the trainer takes it from the
all-reduced gradients between the boundary backward and the optimizer step (they are the same on
every rank there).

Collectives: under ZeRO-3 every forward gathers parameters from all ranks, so every rank must run the
same number of forwards; and `full_weights`, `save` and `consolidated_state_dict` must be called on
every rank of the role at once (the driver does).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from pathlib import Path

import torch
import torch.distributed as dist

from batray.config.rl import PpoConfig
from batray.distributed import wait_collective
from batray.ppo.weight_sync import BucketSpec, bucket_layout, flatten
from batray.train.engine import deepspeed_json, import_deepspeed

ENGINE_DIR = "deepspeed"  # DeepSpeed's own checkpoint (model + per-rank optimizer partitions) in a role folder
ENGINE_TAG = "engine"


def micro_steps_per_update(cfg: PpoConfig, world_size: int) -> int:
    """Micro batches in one minibatch of one rank's shard (the rollout batch divides evenly: config checks)."""
    rows = cfg.rollout_batch_size // world_size // cfg.num_minibatches
    return max(1, math.ceil(rows / cfg.micro_batch_size))


class DeepSpeedTrainer:
    """`module` for forwards (the engine itself: calling it runs DeepSpeed's forward), `backward`, `step`."""

    def __init__(self, model: torch.nn.Module, *, lr: float, cfg: PpoConfig, world_size: int):
        import warnings

        deepspeed = import_deepspeed()
        # DeepSpeed still calls the torch.distributed names torch 2.13 deprecates, once per collective.
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.distributed\..* is deprecated")
        self.zero_stage = cfg.deepspeed.zero_stage
        self.world_size = world_size
        self.timeout_s = cfg.sync_timeout_s
        self.micro_steps = micro_steps_per_update(cfg, world_size)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
        config = ppo_deepspeed_config(cfg, world_size, self.micro_steps)
        self.engine, self.optimizer, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, config=config, dist_init_required=False
        )
        self._pending = 0
        # ZeRO's optimizers (and bf16's) compute the global grad norm; plain torch (ZeRO 0, fp32) does not.
        self._engine_norm = hasattr(self.engine.optimizer, "_global_grad_norm")
        self._boundary_norm: float | None = None
        # Sleep between phases only where it frees something: on a GPU (`ppo.offload_between_phases`).
        self.can_sleep = cfg.offload_between_phases and torch.cuda.is_available()
        self._asleep: list[tuple[torch.Tensor, torch.device]] = []
        self._host: list[torch.Tensor] = []
        self._layouts: dict[int, list[BucketSpec]] = {}

    def sleep(self) -> None:
        """Move the optimizer's states (Adam's moments) and ZeRO's fp32 master partitions to host memory:
        12 of the ~16 bytes per parameter a mixed-precision trainer keeps on the GPU, freed for the
        rollout engines until `wake`. (DeepSpeed's own `offload_states` asserts its FusedAdam; these
        are the same tensors, moved by `.data` so every reference to them stays valid.)"""
        if not self.can_sleep or self._asleep:
            return
        tensors = [t for t in self.optimizer_tensors() if t.device.type != "cpu"]
        # Pinned host buffers are allocated once (again only when the set changes: Adam's moments appear at
        # the first step) and reused: pinning is the slow part of moving memory out.
        if [(h.shape, h.dtype) for h in self._host] != [(t.shape, t.dtype) for t in tensors]:
            self._host = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tensors]
        for t, host in zip(tensors, self._host):
            host.copy_(t, non_blocking=True)
        torch.cuda.synchronize()
        for t, host in zip(tensors, self._host):
            self._asleep.append((t, t.device))
            t.data = host
        torch.cuda.empty_cache()

    def wake(self) -> None:
        for t, device in self._asleep:
            t.data = t.data.to(device, non_blocking=True)
        if self._asleep:
            torch.cuda.synchronize()
        self._asleep = []

    def optimizer_tensors(self) -> list[torch.Tensor]:
        """The tensors `sleep` moves: the base optimizer's state and ZeRO's fp32 master partitions."""
        zero = self.engine.optimizer
        base = getattr(zero, "optimizer", zero)  # ZeRO wraps the torch optimizer
        tensors = [v for state in base.state.values() for v in state.values() if torch.is_tensor(v)]
        for attr in ("fp32_partitioned_groups_flat", "single_partition_of_fp32_groups"):  # ZeRO-3, ZeRO-1/2
            tensors += list(getattr(zero, attr, None) or [])
        return tensors

    @property
    def module(self) -> torch.nn.Module:
        """The wrapped model (its submodules, e.g. the critic's backbone and value head, can be called directly:
        ZeRO-3 gathers parameters per submodule through hooks)."""
        return self.engine.module

    def __call__(self, *args, **kwargs):
        return self.engine(*args, **kwargs)

    def train(self) -> None:
        self.engine.train()

    def eval(self) -> None:
        self.engine.eval()

    def backward(self, loss: torch.Tensor) -> None:
        """Accumulate the gradient of an already scaled micro-batch loss. DeepSpeed's `step` after every
        backward only advances its micro-step count, except on the boundary (the minibatch's last), where
        it clips and steps; the ZeRO 0 norm is read just before that."""
        self.engine.backward(loss, scale_wrt_gas=False)
        self._pending += 1
        if self._pending == self.micro_steps and not self._engine_norm:
            # the boundary backward has all-reduced (averaged) the gradients into p.grad on every rank
            self._boundary_norm = grad_norm(self.module.parameters())
        self.engine.step()

    def step(self) -> float:
        """End of a minibatch (DeepSpeed has reduced, clipped and stepped): the global grad norm before clipping."""
        if self._pending != self.micro_steps:
            raise RuntimeError(
                f"{self._pending} micro batches accumulated, DeepSpeed expects {self.micro_steps} per update "
                "(rollout_batch_size / num_actors / num_minibatches / micro_batch_size changed?)"
            )
        self._pending = 0
        norm = self.engine.get_global_grad_norm() if self._engine_norm else self._boundary_norm
        self._boundary_norm = None
        if norm is None:
            raise RuntimeError(f"DeepSpeed (ZeRO {self.zero_stage}) reported no gradient norm for this step")
        return float(norm)

    def all_reduce_sum(self, value: float) -> float:
        """`value` summed over the role's ranks (every rank must call it at the same point of the update)."""
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.engine.device)
        if self.world_size > 1:
            wait_collective("loss normalizer all-reduce", dist.all_reduce, t, timeout_s=self.timeout_s)
        return float(t.item())

    # -- weights out --------------------------------------------------------------------------
    @contextlib.contextmanager
    def gathered(self, params: list[torch.nn.Parameter]) -> Iterator[None]:
        """Full values of `params` inside the block (ZeRO-3 gathers them on every rank; else nothing to do)."""
        if self.zero_stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
                yield
        else:
            yield

    def exported(self) -> list:
        """What the rollout engines receive, as `batray.models.lora.MergedTensor`s under the base model's
        names: the parameters themselves, or for a LoRA model the merged weights W + B A * alpha / r."""
        from batray.models.lora import MergedTensor, is_lora, merged_weights

        if is_lora(self.module):
            return merged_weights(self.module)
        return [MergedTensor(n, p, [p], lambda p=p: p.detach()) for n, p in self.module.named_parameters()]

    def layout(self, bucket_bytes: int) -> list[BucketSpec]:
        """The weight-sync buckets (`batray.ppo.weight_sync.bucket_layout`); the parameters never change, so
        it is computed once per bucket size."""
        if bucket_bytes not in self._layouts:
            self._layouts[bucket_bytes] = bucket_layout([(t.name, t.like) for t in self.exported()], bucket_bytes)
        return self._layouts[bucket_bytes]

    def buckets(self, bucket_bytes: int, rank: int) -> Iterator[tuple[BucketSpec, torch.Tensor | None]]:
        """The weights as flat buckets (`batray.ppo.weight_sync`), in order: (spec, flat copy) on rank 0,
        (spec, None) elsewhere. Under ZeRO-3 each bucket is gathered on every rank in turn, so no rank holds
        more than one bucket beyond its own shard; every rank must iterate to the end."""
        tensors = {t.name: t for t in self.exported()}
        for spec in self.layout(bucket_bytes):
            entries = [tensors[n] for n in spec.names]
            group = list({id(p): p for t in entries for p in t.params}.values())
            with self.gathered(group), torch.no_grad():
                flat = flatten([t.compute() for t in entries]) if rank == 0 else None  # a copy: outlives the gather
            yield spec, flat

    @property
    def frozen_base(self) -> bool:
        from batray.models.lora import frozen_excluded

        return frozen_excluded(self.module)

    def consolidated_state_dict(self) -> dict[str, torch.Tensor] | None:
        """The full model state on rank 0 (None under ZeRO-3 on other ranks); call on every rank."""
        if self.zero_stage == 3:
            return self.engine._zero3_consolidated_16bit_state_dict()
        return self.module.state_dict()

    # -- checkpoints --------------------------------------------------------------------------
    def save(self, folder: str | Path, rank: int, tokenizer=None) -> None:
        """Rank 0: the HF folder (full weights, loadable on its own; a LoRA model's adapter); every rank: DeepSpeed's checkpoint
        (model + this rank's optimizer partition) under `deepspeed/` and its RNG state."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        state = self.consolidated_state_dict()
        if rank == 0:
            self.module.save_pretrained(folder, state_dict=state, safe_serialization=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(folder)
        # a LoRA model's checkpoint holds its adapter: the frozen base is the run's unchanged start
        self.engine.save_checkpoint(str(folder / ENGINE_DIR), tag=ENGINE_TAG, save_latest=False,
                                    exclude_frozen_parameters=self.frozen_base)
        torch.save({"torch": torch.get_rng_state()}, folder / f"rng_rank{rank}.pt")

    def load(self, folder: str | Path, rank: int) -> None:
        """Restore DeepSpeed's checkpoint (weights and optimizer partitions) and this rank's RNG."""
        folder = Path(folder)
        if not (folder / ENGINE_DIR / ENGINE_TAG).is_dir():
            raise FileNotFoundError(f"{folder}: no DeepSpeed checkpoint ({ENGINE_DIR}/{ENGINE_TAG}) to resume from")
        self.engine.load_checkpoint(str(folder / ENGINE_DIR), tag=ENGINE_TAG, load_optimizer_states=True,
                                    load_lr_scheduler_states=False, load_module_strict=not self.frozen_base)
        rng = folder / f"rng_rank{rank}.pt"
        if rng.is_file():
            torch.set_rng_state(torch.load(rng, weights_only=True)["torch"])


def ppo_deepspeed_config(cfg: PpoConfig, world_size: int, micro_steps: int) -> dict:
    config = deepspeed_json(cfg.deepspeed, micro_batch_size=cfg.micro_batch_size, grad_accum_steps=micro_steps,
                            grad_clip=cfg.grad_clip)
    config["train_batch_size"] = cfg.micro_batch_size * micro_steps * world_size
    return config


class LocalTrainer:
    """The trainer interface over a plain module and `torch.optim.AdamW` in one process, no process group:
    the serial baseline of `benchmarks/bench_ppo.py` and the update loops' unit tests."""

    world_size = 1

    def __init__(self, model: torch.nn.Module, *, lr: float, grad_clip: float = 1.0):
        self.module = model
        self.grad_clip = grad_clip
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def train(self) -> None:
        self.module.train()

    def eval(self) -> None:
        self.module.eval()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def step(self) -> float:
        """Clip, step, zero the gradients; the global grad norm before clipping (as DeepSpeedTrainer)."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        norm = torch.nn.utils.clip_grad_norm_(params, self.grad_clip if self.grad_clip > 0 else math.inf)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def all_reduce_sum(self, value: float) -> float:
        return float(value)


def grad_norm(params) -> float:
    """L2 norm of the gradients of `params` taken together (those without a gradient count as 0)."""
    norms = [p.grad.detach().float().norm() for p in params if p.grad is not None]
    return float(torch.stack(norms).norm()) if norms else 0.0
