"""`rerank` eval mode (issue 11): N worked answers sampled left to right, the best by both directions.

Like `cot` the prompt invites a worked answer and the letter is read from the text with the
benchmark's ordered extraction patterns, but the text is the best of `eval.rerank.n` samples ranked
by (1 - w) forward + w backward log-likelihood per token (`batray.bidirectional.rerank`, w =
`eval.rerank.weight`). Needs a local checkpoint trained with Eq. 1 (an endpoint has no backward
direction to ask).
"""

from __future__ import annotations

from batray.config import RerankConfig
from batray.errors import BatrayError
from batray.eval.extract import extract_answer
from batray.eval.modes import Request, register_mode


class BidirectionalRerank:
    name = "rerank"
    prompt_style = "cot"

    def __init__(self):
        self._rerankers: dict[int, object] = {}

    def reranker(self, backend):
        from batray.bidirectional.rerank import Reranker

        if not hasattr(backend, "model"):
            raise BatrayError("eval mode rerank needs a local checkpoint (an endpoint gives no backward scores)")
        key = id(backend)
        if key not in self._rerankers:
            self._rerankers[key] = Reranker(backend.model, backend.tokenizer, device=backend.device,
                                            batch_size=backend.batch_size)
        return self._rerankers[key]

    def predict(self, backend, requests: list[Request], benchmark: str, **options) -> list[dict]:
        from batray.rollout.engine import SamplingParams

        rcfg = RerankConfig.model_validate(options.get("rerank") or {})
        max_new = int(options.get("max_new_tokens", rcfg.max_new_tokens))
        reranker = self.reranker(backend)
        prompts = [backend._fit(backend.encode(r.prompt), max_new) for r in requests]
        params = SamplingParams(temperature=rcfg.temperature, top_p=rcfg.top_p, max_new_tokens=max_new, seed=rcfg.seed)
        rows = []
        for r, result in zip(requests, reranker.rerank(prompts, rcfg.n, rcfg.weight, params)):
            text = result.best.text
            rows.append({"pred": extract_answer(benchmark, text, r.options), "text": text,
                         "scores": [c.score for c in result.candidates]})
        return rows


register_mode(BidirectionalRerank())
