"""Runs inside each vLLM worker process (`worker_extension_cls`): weight loads from the rollout engine.

NOT RUN (see `batray.rollout.vllm_engine`). vLLM mixes this class into its GPU worker, so `self` has
the worker's `model_runner`.
"""

from __future__ import annotations

import torch


class WeightLoader:
    def load_named(self, named_tensors: dict[str, torch.Tensor]) -> None:
        self.model_runner.model.load_weights(weights=list(named_tensors.items()))
        torch.cuda.synchronize()
