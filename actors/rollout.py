"""A rollout engine as a Ray actor: a thin shell around `batray.rollout.engine` (vLLM on GPU, HF on CPU).

Methods: `generate(prompt_ids, SamplingParams) -> list[Completion]`, `load_weights(named_tensors)`
(weight sync from the trainer) and `ready()`.
"""

from __future__ import annotations

from batray.rollout.engine import Completion, SamplingParams, make_engine


class RolloutActor:
    def __init__(self, model_path: str, backend: str = "auto", tensor_parallel_size: int = 1, **engine_kwargs):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if tensor_parallel_size > 1:
            engine_kwargs["tensor_parallel_size"] = tensor_parallel_size
        self.engine = make_engine(model_path, backend=backend, **engine_kwargs)

    def ready(self) -> bool:
        return True

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        return self.engine.generate(prompts, params)

    def load_weights(self, named_tensors: dict) -> None:
        self.engine.load_weights(named_tensors)
