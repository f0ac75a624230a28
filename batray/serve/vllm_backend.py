"""The vLLM generator for `batray serve` on GPU: the same `generate(rows)` contract as `HFGenerator`.

Imported only when the vLLM backend is chosen (vLLM is an optional, CUDA-only extra; `pip install
batray[vllm]`). vLLM batches internally, so each row is one request of one `LLM.generate` call; rows
are reported when they finish (one `StepOut` per row: streaming clients receive the text at once).
Echo with logprobs uses vLLM's `prompt_logprobs`; `max_tokens: 0` (score only) generates one token
and drops it. Not exercised by the CPU test suite (no vLLM on these machines): untested here.
"""

from __future__ import annotations

from batray.serve.generation import GenRow, StepOut, TokenInfo


class VLLMGenerator:
    def __init__(self, model_path: str, tokenizer, **engine_kwargs):
        from vllm import LLM  # lazy: optional dependency

        from batray.rollout.vllm_engine import check_vllm_vocab

        check_vllm_vocab(model_path, tokenizer)
        self.llm = LLM(model=model_path, tokenizer=model_path, **engine_kwargs)
        self.tokenizer = tokenizer
        self.context_len = int(self.llm.llm_engine.model_config.max_model_len)

    def generate(self, rows: list[GenRow]) -> None:
        from vllm import SamplingParams, TokensPrompt

        from batray.models.chat import stop_token_ids

        stop_ids = stop_token_ids(self.tokenizer)
        live, params = [], []
        for r in rows:
            if r.cancelled:
                continue
            try:  # a row whose own settings vLLM refuses fails alone
                params.append(SamplingParams(
                    temperature=r.temperature, top_p=r.top_p, max_tokens=max(r.max_tokens, 1), stop=r.stop or None,
                    stop_token_ids=[] if r.ignore_eos else stop_ids, ignore_eos=r.ignore_eos, seed=r.seed,
                    logprobs=(r.top_logprobs or 0) if r.top_logprobs is not None else None,
                    prompt_logprobs=max(r.top_logprobs or 0, 1) if r.prompt_logprobs else None,
                ))
                live.append(r)
            except (ValueError, TypeError, OverflowError) as e:
                r.emit(StepOut("", [], "error", error=f"{type(e).__name__}: {e}", num_tokens=0))
        if not live:
            return
        prompts = [TokensPrompt(prompt_token_ids=r.prompt_ids) for r in live]
        for r, res in zip(live, self.llm.generate(prompts, params, use_tqdm=False)):
            if r.prompt_logprobs:
                r.emit(StepOut("", [], prompt=self._prompt_infos(r, res.prompt_logprobs), num_tokens=0))
            if r.max_tokens == 0:  # score only: vLLM generated one token we do not report
                r.emit(StepOut("", [], "length", num_tokens=0))
                continue
            o = res.outputs[0]
            tokens = []
            if r.top_logprobs is not None and o.logprobs:
                for tok, lps in zip(o.token_ids, o.logprobs):
                    tokens.append(TokenInfo(self.tokenizer.decode([tok]), lps[tok].logprob, self._top(lps, r.top_logprobs)))
            r.emit(StepOut(o.text, tokens, "stop" if o.finish_reason == "stop" else "length", num_tokens=len(o.token_ids)))

    def _top(self, lps: dict, k: int) -> list[tuple[str, float]]:
        best = sorted(lps.items(), key=lambda kv: -kv[1].logprob)[:k]
        return [(self.tokenizer.decode([t]), lp.logprob) for t, lp in best]

    def _prompt_infos(self, r: GenRow, prompt_logprobs) -> list[TokenInfo]:
        """vLLM's prompt logprobs (None for the first token) as the HF generator reports them."""
        infos = []
        for tok, lps in zip(r.prompt_ids, prompt_logprobs or [None] * len(r.prompt_ids)):
            text = self.tokenizer.decode([tok])
            if lps is None:
                infos.append(TokenInfo(text, None, []))
            else:
                infos.append(TokenInfo(text, lps[tok].logprob, self._top(lps, r.top_logprobs or 0)))
        return infos
