"""The rollout-engine interface and its transformers implementation.

An engine turns prompt token ids into sampled completions with the sampled tokens' log-probabilities,
and accepts new weights from the trainer (PPO weight sync). `HFRolloutEngine` uses transformers'
`generate` (the CPU path); `batray.rollout.vllm_engine.VLLMRolloutEngine` implements the same
interface on GPU and is imported only when asked for, since vLLM is an optional, CUDA-only extra.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from batray.models.chat import stop_token_ids
from batray.models.tokenizer import pad_id


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 48
    seed: int | None = None


@dataclass
class Completion:
    prompt_ids: list[int]
    token_ids: list[int]  # generated tokens, the stop token included when one was produced
    logprobs: list[float]  # log pi(token) under the model's raw distribution (temperature 1), per token
    text: str  # decoded generated text without special tokens
    finish_reason: str  # "stop" or "length"
    extra: dict = field(default_factory=dict)


class RolloutEngine(Protocol):
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]: ...

    def load_weights(self, named_tensors: dict[str, torch.Tensor]) -> None: ...

    def sleep(self) -> None:
        """Free the device for colocated trainers until the next `generate` or `load_weights` (vLLM's
        sleep mode; a no-op where there is nothing to free)."""

    def wake(self) -> None: ...


class HFRolloutEngine:
    """transformers `generate`, batched with left padding. Deterministic for a given `params.seed`."""

    def __init__(self, model, tokenizer, device: str | torch.device = "cpu", batch_size: int = 16):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.stop_ids = stop_token_ids(tokenizer, getattr(model, "generation_config", None))
        self.pad_id = pad_id(tokenizer)

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], params: SamplingParams) -> list[Completion]:
        out: list[Completion] = []
        gen = torch.Generator(device="cpu")
        if params.seed is not None:
            gen.manual_seed(params.seed)
        for start in range(0, len(prompts), self.batch_size):
            out += self._generate_batch(prompts[start : start + self.batch_size], params, gen)
        return out

    def _generate_batch(self, prompts: list[list[int]], params: SamplingParams, gen: torch.Generator) -> list[Completion]:
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):
            ids[i, width - len(p) :] = torch.tensor(p)
            mask[i, width - len(p) :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        greedy = params.temperature == 0
        # Seed the global RNG from our generator so batched sampling is reproducible per call.
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        result = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=params.max_new_tokens,
            do_sample=not greedy,
            temperature=None if greedy else params.temperature,
            top_p=None if greedy or params.top_p >= 1 else params.top_p,
            top_k=None,
            eos_token_id=self.stop_ids,
            pad_token_id=self.pad_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        new = result.sequences[:, width:]
        logp = torch.stack(result.logits, dim=1).float().log_softmax(-1)  # [B, T, V], raw (T=1) distribution
        token_logp = logp.gather(-1, new.unsqueeze(-1)).squeeze(-1)
        outs = []
        for i, p in enumerate(prompts):
            toks = new[i].tolist()
            n, reason = len(toks), "length"
            for j, t in enumerate(toks):
                if t in self.stop_ids:
                    n, reason = j + 1, "stop"
                    break
            toks = toks[:n]
            text = self.tokenizer.decode(toks, skip_special_tokens=True)
            outs.append(Completion(list(p), toks, token_logp[i, :n].tolist(), text, reason))
        return outs

    def sleep(self) -> None:  # transformers keeps no KV cache between calls: nothing to free
        pass

    def wake(self) -> None:
        pass

    def load_weights(self, named_tensors: dict[str, torch.Tensor]) -> None:
        """Weight sync from the trainer: copy tensors in place (names as in the policy's state_dict)."""
        params = dict(self.model.named_parameters())
        missing = [n for n in named_tensors if n not in params]
        if missing:
            raise KeyError(f"weight sync: {len(missing)} unknown tensors, e.g. {missing[0]!r}")
        with torch.no_grad():
            for name, tensor in named_tensors.items():
                params[name].copy_(tensor.to(params[name].device, params[name].dtype))


def make_engine(model_path: str, backend: str = "auto", device: str = "cpu", sleep_mode: bool = False,
                chat_template: str | None = None, **kwargs) -> RolloutEngine:
    """An engine for a checkpoint (folder or hub id): vLLM when asked (or `auto` with CUDA and vLLM
    installed), else HF. `sleep_mode`: vLLM may `sleep` between generations (colocated PPO on GPU)."""
    from batray.models.loading import load_model_and_tokenizer

    if backend == "vllm" or (backend == "auto" and torch.cuda.is_available() and _vllm_available()):
        from batray.rollout.vllm_engine import VLLMRolloutEngine  # lazy: optional CUDA-only extra

        return VLLMRolloutEngine(model_path, enable_sleep_mode=sleep_mode, **kwargs)
    if backend not in ("auto", "hf"):
        raise ValueError(f"unknown rollout backend {backend!r}")
    model, tokenizer = load_model_and_tokenizer(model_path, chat_template=chat_template, device=device)
    return HFRolloutEngine(model, tokenizer, device=device, **kwargs)


def _vllm_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None
