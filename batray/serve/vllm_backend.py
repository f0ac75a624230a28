"""The vLLM generator for `batray serve` on GPU: the same `generate(rows)` contract as `HFGenerator`.

Imported only when the vLLM backend is chosen (vLLM is an optional, CUDA-only extra; `pip install
batray[vllm]`). vLLM batches internally, so each row is one request of one `LLM.generate` call; rows
are reported when they finish (one `StepOut` per row: streaming clients receive the text at once).
Not exercised by the CPU test suite.
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
        params = [
            SamplingParams(
                temperature=r.temperature, top_p=r.top_p, max_tokens=r.max_tokens, stop=r.stop or None,
                stop_token_ids=stop_ids, seed=r.seed,
                logprobs=(r.top_logprobs or 0) if r.top_logprobs is not None else None,
            )
            for r in rows
        ]
        prompts = [TokensPrompt(prompt_token_ids=r.prompt_ids) for r in rows]
        for r, res in zip(rows, self.llm.generate(prompts, params, use_tqdm=False)):
            o = res.outputs[0]
            tokens = []
            if r.top_logprobs is not None and o.logprobs:
                for tok, lps in zip(o.token_ids, o.logprobs):
                    best = sorted(lps.items(), key=lambda kv: -kv[1].logprob)[: r.top_logprobs]
                    tokens.append(TokenInfo(self.tokenizer.decode([tok]), lps[tok].logprob,
                                            [(self.tokenizer.decode([t]), lp.logprob) for t, lp in best]))
            r.emit(StepOut(o.text, tokens, "stop" if o.finish_reason == "stop" else "length", num_tokens=len(o.token_ids)))
