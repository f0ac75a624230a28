"""The `rerank` request field of `batray serve` (the server's documented hook, `create_app(rerank=...)`).

A client turns reranking on per request with an extra body field (openai: `extra_body=`):

    {"rerank": true}                      # the server's defaults (serve.rerank.n / serve.rerank.weight)
    {"rerank": 8}                         # 8 candidates, the default weight
    {"rerank": {"n": 8, "weight": 0.5}}   # both
    {"rerank": false}                     # one sample, not reranked (omitting the field is the same
                                          # as never asking: plain decoding)

The response is the usual completion object whose choices are the best `n` (the request's `n`,
default 1) of the candidates, plus a `rerank` object: `n`, `weight`, `chosen` (index of the best in
sampling order) and every candidate's `text`, `score`, `forward`, `backward` (per token).
Candidates are sampled with the request's temperature / top_p / seed / max_tokens when it sets them,
else with `serve.rerank`'s. Needs the transformers backend (the model's weights in this process).
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

from batray.config import RerankConfig
from batray.rollout.engine import SamplingParams

_FIELDS = {"n", "weight"}


def rerank_options(value, defaults: RerankConfig) -> tuple[int, float]:
    """(n, weight) from the request's `rerank` field; ValueError with the reason when malformed."""
    if value is True:
        return defaults.n, defaults.weight
    if value is False:
        return 1, 0.0
    if isinstance(value, int):
        n, weight = value, defaults.weight
    elif isinstance(value, dict):
        unknown = sorted(set(value) - _FIELDS)
        if unknown:
            raise ValueError(f"unknown rerank option {unknown[0]!r} (known: n, weight)")
        n, weight = value.get("n", defaults.n), value.get("weight", defaults.weight)
    else:
        raise ValueError("rerank must be true/false, a number of candidates, or {\"n\": N, \"weight\": W}")
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= 128:
        raise ValueError(f"rerank.n must be an integer in [1, 128] (got {n!r})")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 <= weight <= 1:
        raise ValueError(f"rerank.weight must be a number in [0, 1] (got {weight!r})")
    return n, float(weight)


def make_rerank_hook(defaults: RerankConfig | None = None):
    """`async hook(request, served, engine) -> dict` for `create_app(..., rerank=hook)`."""
    from batray.serve.app import APIError
    from batray.serve.protocol import ChatCompletionRequest

    defaults = defaults or RerankConfig()
    rerankers: dict[int, object] = {}
    lock = threading.Lock()  # one rerank at a time on the model (the batching engine runs beside it)

    def reranker_for(served):
        from batray.bidirectional.rerank import Reranker

        model = getattr(served.generator, "model", None)
        if model is None:
            raise APIError(400, "rerank needs the transformers backend (serve --backend hf)", param="rerank")
        key = id(served)
        if key not in rerankers:
            device = getattr(served.generator, "device", "cpu")
            rerankers[key] = Reranker(model, served.tokenizer, device=device)
        return rerankers[key]

    def prompt_ids(req, served) -> list[int]:
        from batray.models.chat import SampleError, chat_prompt_ids

        tok = served.tokenizer
        if isinstance(req, ChatCompletionRequest):
            try:
                messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                            for m in req.messages]
            except ValueError as e:
                raise APIError(400, str(e), param="messages") from None
            try:
                return chat_prompt_ids(tok, messages)
            except SampleError as e:
                raise APIError(400, str(e), param="messages") from None
        batch = req.prompt_batch()
        if len(batch) != 1:
            raise APIError(400, "rerank takes one prompt per request", param="prompt")
        prompt = batch[0]
        if isinstance(prompt, list):  # token ids
            return list(prompt)
        return tok(prompt)["input_ids"]  # <|l2r|> first: the tokenizer adds it (its BOS)

    def params(req, chat: bool) -> SamplingParams:
        set_ = req.model_fields_set
        max_tokens = (req.token_budget() if chat else req.max_tokens) if (
            {"max_tokens", "max_completion_tokens"} & set_) else defaults.max_new_tokens
        return SamplingParams(
            temperature=req.temperature if "temperature" in set_ else defaults.temperature,
            top_p=req.top_p if "top_p" in set_ else defaults.top_p,
            max_new_tokens=max_tokens,
            seed=req.seed if req.seed is not None else defaults.seed,
        )

    async def hook(req, served, engine) -> dict:
        try:
            n, weight = rerank_options(req.rerank, defaults)
        except ValueError as e:
            raise APIError(400, str(e), param="rerank") from None
        if req.stream:
            raise APIError(400, "rerank cannot stream (every candidate is scored before one is chosen)",
                           param="stream")
        if req.n > n:
            raise APIError(400, f"n ({req.n}) must not exceed the rerank candidates ({n})", param="n")
        chat = isinstance(req, ChatCompletionRequest)
        reranker = reranker_for(served)
        ids = prompt_ids(req, served)
        sampling = params(req, chat)
        room = served.context_len - len(ids)
        if room <= 0:
            raise APIError(400, f"the prompt is {len(ids)} tokens; the model's context is {served.context_len}",
                           code="context_length_exceeded")
        sampling = SamplingParams(sampling.temperature, sampling.top_p, min(sampling.max_new_tokens, room), sampling.seed)

        def work():
            with lock:
                return reranker.rerank([ids], n, weight, sampling)[0]

        result = await asyncio.to_thread(work)
        best = result.ranked()[:req.n]
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
                        "logprobs": None} for i, c in enumerate(best)]
            rid, obj = f"chatcmpl-{uuid.uuid4().hex}", "chat.completion"
        else:
            choices = [{"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
                       for i, c in enumerate(best)]
            rid, obj = f"cmpl-{uuid.uuid4().hex}", "text_completion"
        done = sum(c.scores.n_answer for c in result.candidates)
        return {"id": rid, "object": obj, "created": int(time.time()), "model": served.name, "choices": choices,
                "usage": {"prompt_tokens": len(ids), "completion_tokens": done, "total_tokens": len(ids) + done},
                "rerank": {"n": n, "weight": weight, "chosen": result.best_index,
                           "candidates": [c.to_dict() for c in result.candidates]}}

    return hook
