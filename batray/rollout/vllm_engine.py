"""The rollout-engine interface on vLLM (GPU, tensor parallel), for PPO and `batray pairs`.

NOT RUN: vLLM's wheel is CUDA-only and pins its own torch; neither the CPU machines this was built on
nor the one GPU machine it was lent (torch 2.11, no internet, 64 MiB per transfer against vLLM 0.33's
336 MB wheel pinning torch 2.14) could run it. `benchmarks/gpu_check.py`'s `vllm_rollout` check is the
test to run where vLLM is installed: it compares this engine's sampled-token log-probabilities with a
transformers forward pass, and checks that `load_weights` changes them.

Design (vLLM's own RLHF pattern): the engine runs `vllm.LLM` in this process; its workers (one per GPU
of the tensor-parallel group, possibly other processes) load new weights through a worker extension
(`batray.rollout.vllm_worker.WeightLoader`) called with `collective_rpc`. Log-probabilities are vLLM's
raw ones (before temperature and top-p), as the trainer computes them. With `enable_sleep_mode`,
`sleep()` frees the GPU (weights to host memory, KV cache dropped) while colocated trainers run, and
`wake()` restores it before the next weight load.
"""

from __future__ import annotations

import torch

from batray.errors import BatrayError
from batray.models.chat import stop_token_ids
from batray.models.tokenizer import load_tokenizer
from batray.rollout.engine import Completion, SamplingParams

WORKER_EXTENSION = "batray.rollout.vllm_worker.WeightLoader"


def check_vllm_vocab(model_path: str, tokenizer) -> None:
    """vLLM loads the weights as saved: a tokenizer that gained tokens needs a checkpoint resized first."""
    from batray.models.loading import read_config

    vocab = getattr(read_config(model_path).get_text_config(), "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise BatrayError(f"{model_path!r}: the tokenizer batray prepares has {len(tokenizer)} tokens but the model "
                          f"{vocab} embedding rows; vLLM cannot resize: write a resized copy first "
                          "(batray.models.loading.prepare_checkpoint)")


class VLLMRolloutEngine:
    def __init__(self, model_path: str, tensor_parallel_size: int = 1, gpu_memory_utilization: float = 0.3,
                 enable_sleep_mode: bool = False, dtype: str = "auto", seed: int = 0, **llm_kwargs):
        from vllm import LLM

        self.tokenizer = load_tokenizer(model_path)
        check_vllm_vocab(model_path, self.tokenizer)
        self.stop_ids = stop_token_ids(self.tokenizer)
        self.sleep_mode = enable_sleep_mode
        self.asleep = False
        self.llm = LLM(model=model_path, tensor_parallel_size=tensor_parallel_size,
                       gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=enable_sleep_mode,
                       dtype=dtype, seed=seed, worker_extension_cls=WORKER_EXTENSION, **llm_kwargs)

    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        from vllm import SamplingParams as VllmSamplingParams
        from vllm.inputs import TokensPrompt

        self.wake()
        # One seed per prompt (seed + row), so a batch split over engines samples the same as one engine.
        per_prompt = [
            VllmSamplingParams(temperature=params.temperature, top_p=params.top_p, max_tokens=params.max_new_tokens,
                               seed=None if params.seed is None else params.seed + i, logprobs=0,
                               stop_token_ids=list(self.stop_ids), skip_special_tokens=True)
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in prompts], per_prompt, use_tqdm=False)
        completions = []
        for prompt, out in zip(prompts, outputs):
            o = out.outputs[0]
            token_ids = list(o.token_ids)
            completions.append(Completion(
                prompt_ids=list(prompt), token_ids=token_ids,
                logprobs=[_sampled_logprob(o.logprobs[i], t) for i, t in enumerate(token_ids)],
                text=o.text, finish_reason="stop" if o.finish_reason == "stop" else "length",
            ))
        return completions

    def load_weights(self, named_tensors: dict[str, torch.Tensor]) -> None:
        """Every worker loads the named (full, unsharded) tensors through the model's own `load_weights`,
        which splits them for tensor parallelism."""
        self.wake()
        self.llm.collective_rpc("load_named", args=({k: v.detach().cpu() for k, v in named_tensors.items()},))

    def sleep(self) -> None:
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


def _sampled_logprob(position, token_id: int) -> float:
    """The sampled token's entry of one position's logprobs (a dict of token id -> Logprob)."""
    entry = position[token_id]
    return float(getattr(entry, "logprob", entry))
