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

Make a pool with `actors.group.ActorGroup(RolloutActor, n, init_kwargs={"model_path": ...})`.
"""

from __future__ import annotations

from actors.group import BusyClock, busy
from batray.rollout.engine import Completion, SamplingParams, make_engine


class RolloutActor(BusyClock):
    def __init__(self, model_path: str, backend: str = "auto", tensor_parallel_size: int = 1, device: str = "auto",
                 **engine_kwargs):
        import torch
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if tensor_parallel_size > 1:
            engine_kwargs["tensor_parallel_size"] = tensor_parallel_size
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.model_path = model_path
        self.engine = make_engine(model_path, backend=backend, device=device, **engine_kwargs)

    def ready(self) -> bool:
        return True

    @busy
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        return self.engine.generate(prompts, params)

    @busy
    def load_weights(self, named_tensors: dict) -> None:
        self.engine.load_weights(named_tensors)
