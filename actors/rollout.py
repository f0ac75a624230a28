"""A rollout engine as a Ray actor: a thin shell around `batray.rollout.engine` (vLLM on GPU, HF on CPU).

Stable interface (used by `batray pairs` and by PPO):

- `RolloutActor(model_path, backend="auto", tensor_parallel_size=1, device="auto", **engine_kwargs)`:
  loads the checkpoint into `make_engine` (transformers `generate` on CPU/GPU, vLLM where installed
  and chosen); `device="auto"` is CUDA when the actor has a GPU, else CPU; `engine_kwargs` go to the
  engine (e.g. `batch_size` of the HF engine).
- `ready() -> bool`: returns once the model is loaded (wait on it to know a pool is up).
- `generate(prompts: list[list[int]], params: SamplingParams) -> list[Completion]`: prompt token ids
  in, one completion per prompt out, same order (token ids, per-token logprobs, text, finish reason).
- `load_weights(named_tensors: dict[str, Tensor]) -> None`: in-place weight sync from a trainer.
- PPO's weight sync (`batray.ppo.weight_sync`, driven by its `WeightSync`): `load_buckets`
  (object store), `open_sync_group` + `receive_broadcast` (collective), `load_shared` (CUDA IPC); each
  records the policy version it loaded, and `generate_versioned` returns it with the completions.

Make a pool with `batray.groups.ActorGroup(RolloutActor, n, init_kwargs={"model_path": ...})`.
"""

from __future__ import annotations

from batray.groups import BusyClock, busy
from batray.ppo.weight_sync import broadcast, open_broadcast_group, open_cuda, unflatten
from batray.ppo.wire import from_wire
from batray.rollout.engine import Completion, SamplingParams, make_engine


class RolloutActor(BusyClock):
    def __init__(self, model_path: str, backend: str = "auto", tensor_parallel_size: int = 1, device: str = "auto",
                 sleep_between_phases: bool = False, **engine_kwargs):
        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if tensor_parallel_size > 1:
            engine_kwargs["tensor_parallel_size"] = tensor_parallel_size
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model_path = model_path
        self.sleep_between_phases = sleep_between_phases
        self.engine = make_engine(model_path, backend=backend, device=device, sleep_mode=sleep_between_phases,
                                  **engine_kwargs)

    def ready(self) -> bool:
        return True

    @busy
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        return self.engine.generate(prompts, params)

    @busy
    def load_weights(self, named_tensors: dict) -> None:
        self.engine.load_weights(named_tensors)

    # -- PPO's weight sync ---------------------------------------------------------------------
    weights_version = None  # the policy version last loaded (None: the checkpoint's own weights)

    @busy
    def generate_versioned(self, prompts: list[list[int]], params: SamplingParams, version: int | None = None,
                           bucket_refs: list | None = None) -> tuple[int | None, list[Completion]]:
        """`generate`, and the weights version it ran with (a restarted engine reports None); given
        `bucket_refs` (the object store's sync riding with the call), their weights are loaded first as
        `version`. With `sleep_between_phases` the engine then sleeps until the next weight load."""
        if bucket_refs is not None:
            self.load_buckets(bucket_refs, version)
        completions = self.engine.generate(prompts, params)
        if self.sleep_between_phases:
            self.engine.sleep()
        return self.weights_version, completions

    @busy
    def load_buckets(self, bucket_refs: list, version: int) -> None:
        """`object_store`: read (spec, flat) buckets from the object store and load them."""
        import ray

        for ref in bucket_refs:
            spec, flat = ray.get(ref)
            self.engine.load_weights(unflatten(from_wire(flat), spec))
        self.weights_version = version

    def open_sync_group(self, addr: str, port: int, rank: int, world_size: int, backend: str, layout: list,
                        timeout_s: float) -> None:
        """`collective`: join the broadcast group whose rank 0 is the policy's rank 0."""
        self.sync_layout, self.sync_timeout_s = layout, timeout_s
        self.sync_group = open_broadcast_group(addr, port, rank, world_size, backend, timeout_s)

    @busy
    def receive_broadcast(self, version: int) -> None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        for spec in self.sync_layout:
            flat = torch.empty(spec.numel, dtype=spec.dtype, device=device)
            broadcast(self.sync_group, flat, self.sync_timeout_s)
            self.engine.load_weights(unflatten(flat, spec))
        self.weights_version = version

    @busy
    def load_shared(self, handles: list, version: int) -> None:
        """`cuda_ipc`: copy each bucket straight from the policy's device memory."""
        import torch

        for spec, handle in handles:
            self.engine.load_weights(unflatten(open_cuda(handle), spec))
        torch.cuda.synchronize()  # the policy may overwrite its buckets once this returns
        self.weights_version = version
