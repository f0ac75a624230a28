"""The OpenAI-compatible HTTP server: `/v1/models`, `/v1/chat/completions`, `/v1/completions`.

`create_app(served)` builds a FastAPI app around a `ServedModel` (a tokenizer plus a generator, HF or
vLLM). Every request becomes rows of a `BatchingEngine`, so concurrent clients share batches. Chat
prompts are rendered with the checkpoint's chat template and its generation prompt, and generation
stops at the template's end-of-turn token; plain completions are encoded as the tokenizer encodes
text (its BOS first: `<|l2r|>` for a batray checkpoint). Errors use OpenAI's envelope
(`{"error": {"message", "type", "param", "code"}}`) with 400/401/404 statuses, so the official
`openai` client raises its usual exceptions.

Reranking hook (issue 11): `create_app(..., rerank=fn)` where
`async fn(request, served, engine) -> dict` returns the whole response body for requests that carry
the extra field `rerank`; without a hook such requests are refused with a 400.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from batray.models.chat import SampleError, chat_prompt_ids
from batray.serve.batching import BatchingEngine
from batray.serve.generation import GenRow, StepOut
from batray.serve.protocol import ChatCompletionRequest, CompletionRequest, error_body

log = logging.getLogger(__name__)

RerankHook = Callable[..., Awaitable[dict]]


@dataclass
class ServedModel:
    name: str  # the id clients pass as `model`
    tokenizer: object
    generator: object  # HFGenerator or VLLMGenerator: `generate(rows)`, `context_len`
    default_max_tokens: int = 256

    @property
    def context_len(self) -> int:
        return self.generator.context_len


class APIError(Exception):
    """An OpenAI-style error response."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, error_body(message, type_, param, code)


def load_served_model(checkpoint: str, *, backend: str = "auto", device: str = "auto", name: str | None = None,
                      default_max_tokens: int = 256, chat_template: str | None = None) -> ServedModel:
    """Load a checkpoint folder (or hub id) for serving: the vLLM generator when asked (or `auto` on CUDA
    with vLLM installed), else transformers on `device`. `chat_template`: as `model.chat_template`
    (None: the model's own, BatGPT's when it has none)."""
    import os

    import torch

    from batray.rollout.engine import _vllm_available

    served_name = name or os.path.basename(os.path.normpath(checkpoint))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if backend == "vllm" or (backend == "auto" and device.startswith("cuda") and _vllm_available()):
        from batray.models.tokenizer import load_tokenizer
        from batray.serve.vllm_backend import VLLMGenerator  # lazy: optional CUDA-only extra

        tokenizer = load_tokenizer(checkpoint, chat_template=chat_template)
        generator = VLLMGenerator(checkpoint, tokenizer)
    else:
        from batray.models.loading import load_model_and_tokenizer
        from batray.serve.generation import HFGenerator

        model, tokenizer = load_model_and_tokenizer(checkpoint, chat_template=chat_template, device=device)
        generator = HFGenerator(model, tokenizer, device=device)
    return ServedModel(served_name, tokenizer, generator, default_max_tokens)


def create_app(served: ServedModel, *, api_key: str | None = None, max_batch_size: int = 8,
               batch_wait_ms: float = 5.0, rerank: RerankHook | None = None, on_ready: Callable[[], None] | None = None
               ) -> FastAPI:
    engine = BatchingEngine(served.generator, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        if on_ready is not None:
            on_ready()
        yield
        await engine.stop()

    app = FastAPI(title="batray", lifespan=lifespan)
    app.state.engine = engine
    app.state.served = served

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        msg = first.get("msg", "invalid request")
        return JSONResponse(error_body(f"{loc}: {msg}" if loc else msg, param=loc), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), type_), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception):
        log.exception("request to %s failed", request.url.path)
        return JSONResponse(error_body(f"internal error: {type(exc).__name__}", "server_error"), status_code=500)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        if header != f"Bearer {api_key}":
            # Never echo the key that was sent.
            raise APIError(401, "invalid or missing API key (send `Authorization: Bearer KEY`)",
                           code="invalid_api_key")

    def check_model(model: str) -> None:
        if model != served.name:
            raise APIError(404, f"the model {model!r} does not exist; this server serves {served.name!r}",
                           param="model", code="model_not_found")

    @app.get("/v1/models", dependencies=[Depends(check_key)])
    async def models():
        return {"object": "list", "data": [
            {"id": served.name, "object": "model", "created": 0, "owned_by": "batray",
             "max_model_len": served.context_len}]}

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat(req: ChatCompletionRequest, request: Request):
        check_model(req.model)
        if req.rerank is not None:
            return await _rerank(req)
        try:
            messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                        for m in req.messages]
        except ValueError as e:
            raise APIError(400, str(e), param="messages") from None
        try:
            prompt_ids = chat_prompt_ids(served.tokenizer, messages)
        except SampleError as e:
            raise APIError(400, str(e), param="messages") from None
        if req.guided_choice is not None:
            return await _guided_choice(req, prompt_ids)
        top = (req.top_logprobs or 0) if req.logprobs else None
        rows = _rows(prompt_ids, req, req.token_budget(), top)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:
            return _sse(_chat_stream(rid, created, rows, len(prompt_ids), req, request))
        results = await _collect(engine.submit(rows), len(rows))
        choices = []
        for i, (text_i, tokens, finish, _) in enumerate(results):
            choice = {"index": i, "message": {"role": "assistant", "content": text_i}, "finish_reason": finish,
                      "logprobs": {"content": [_chat_logprob(t) for t in tokens]} if req.logprobs else None}
            choices.append(choice)
        return {"id": rid, "object": "chat.completion", "created": created, "model": served.name,
                "choices": choices, "usage": _usage(len(prompt_ids), results)}

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        if req.rerank is not None:
            return await _rerank(req)
        prompts = _completion_prompts(req.prompt)
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        top = req.logprobs
        rows = [row for p in prompts for row in _rows(p, req, req.max_tokens, top)]
        if req.stream:
            return _sse(_completion_stream(rid, created, rows, req, request))
        results = await _collect(engine.submit(rows), len(rows))
        choices = []
        for i, (text_i, tokens, finish, _) in enumerate(results):
            prefix = _decode(prompts[i // req.n]) if req.echo else ""
            choices.append({"index": i, "text": prefix + text_i, "finish_reason": finish,
                            "logprobs": _completion_logprobs(tokens) if top is not None else None})
        return {"id": rid, "object": "text_completion", "created": created, "model": served.name,
                "choices": choices, "usage": _usage(sum(len(p) for p in prompts), results)}

    # ---- helpers -----------------------------------------------------------------------------

    async def _guided_choice(req: ChatCompletionRequest, prompt_ids: list[int]) -> dict:
        """Answer with the most likely of `req.guided_choice`; logprobs list every choice's log p(choice | prompt)."""
        score = getattr(served.generator, "score_choices", None)
        if score is None:
            raise APIError(400, "guided_choice is not supported by this backend", param="guided_choice")
        if req.stream:
            raise APIError(400, "guided_choice cannot be streamed", param="stream")
        _rows(prompt_ids, req, 1, None)  # the context check
        scores = await asyncio.to_thread(score, prompt_ids, req.guided_choice)
        ranked = sorted(zip(req.guided_choice, scores), key=lambda cs: -cs[1])
        best, best_lp = ranked[0]
        logprobs = None
        if req.logprobs:
            top = ranked[: max(req.top_logprobs or 0, 1)]
            logprobs = {"content": [{"token": best, "logprob": best_lp, "bytes": list(best.encode()),
                                     "top_logprobs": [{"token": c, "logprob": lp, "bytes": list(c.encode())}
                                                      for c, lp in top]}]}
        n_best = len(served.tokenizer(best, add_special_tokens=False)["input_ids"])
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": served.name, "choices": [{"index": i, "message": {"role": "assistant", "content": best},
                                                   "finish_reason": "stop", "logprobs": logprobs} for i in range(req.n)],
                "usage": {"prompt_tokens": len(prompt_ids), "completion_tokens": n_best * req.n,
                          "total_tokens": len(prompt_ids) + n_best * req.n}}

    async def _rerank(req):
        if rerank is None:
            raise APIError(400, "this server has no reranker (`rerank` needs a server built with one)", param="rerank")
        return await rerank(req, served, engine)

    def _decode(ids: list[int]) -> str:
        return served.tokenizer.decode(ids, skip_special_tokens=True)

    def _completion_prompts(prompt) -> list[list[int]]:
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            vocab = len(served.tokenizer)
            if any(t < 0 or t >= vocab for t in prompt):
                raise APIError(400, f"prompt token ids must be in [0, {vocab})", param="prompt")
            return [list(prompt)]
        texts = [prompt] if isinstance(prompt, str) else prompt
        return [served.tokenizer(t)["input_ids"] for t in texts]  # BOS by the tokenizer, as vLLM does

    def _rows(prompt_ids: list[int], req, max_tokens: int | None, top: int | None) -> list[GenRow]:
        room = served.context_len - len(prompt_ids)
        if room <= 0:
            raise APIError(400, f"the prompt is {len(prompt_ids)} tokens; the model's context is {served.context_len}",
                           param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
                           code="context_length_exceeded")
        budget = min(max_tokens or served.default_max_tokens, room)
        return [GenRow(list(prompt_ids), budget, req.temperature, req.top_p, list(req.stop),
                       None if req.seed is None else req.seed + i, top) for i in range(req.n)]

    async def _chat_stream(rid, created, rows, n_prompt, req, request):
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.name}
        for i in range(len(rows)):
            yield {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": None, "logprobs": None}]}
        results = [0] * len(rows)
        async for i, out in _stream(engine.submit(rows), rows, request):
            results[i] += out.num_tokens
            lp = {"content": [_chat_logprob(t) for t in out.tokens]} if req.logprobs and out.tokens else None
            if out.delta or lp:
                yield {**base, "choices": [{"index": i, "delta": {"content": out.delta}, "finish_reason": None,
                                            "logprobs": lp}]}
            if out.finish_reason:
                yield {**base, "choices": [{"index": i, "delta": {}, "finish_reason": out.finish_reason,
                                            "logprobs": None}]}
        opts = getattr(req, "stream_options", None) or {}
        if isinstance(opts, dict) and opts.get("include_usage"):
            done = sum(results)
            yield {**base, "choices": [], "usage": {"prompt_tokens": n_prompt, "completion_tokens": done,
                                                    "total_tokens": n_prompt + done}}

    async def _completion_stream(rid, created, rows, req, request):
        base = {"id": rid, "object": "text_completion", "created": created, "model": served.name}
        async for i, out in _stream(engine.submit(rows), rows, request):
            lp = _completion_logprobs(out.tokens) if req.logprobs is not None and out.tokens else None
            if out.delta or lp or out.finish_reason:
                yield {**base, "choices": [{"index": i, "text": out.delta, "finish_reason": out.finish_reason,
                                            "logprobs": lp}]}

    async def _stream(sink: asyncio.Queue, rows: list[GenRow], request: Request):
        left = len(rows)
        try:
            while left:
                i, out = await sink.get()
                if out.finish_reason == "error":
                    raise APIError(500, f"generation failed: {out.error}", type_="server_error")
                if out.finish_reason:
                    left -= 1
                yield i, out
        finally:
            for r in rows:  # the client left early (or we are done): stop decoding these rows
                r.cancelled = True

    return app


def _sse(events) -> StreamingResponse:
    async def body():
        try:
            async for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        except APIError as e:
            yield f"data: {json.dumps(e.body)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


async def _collect(sink: asyncio.Queue, n_rows: int) -> list[tuple[str, list, str, int]]:
    """Wait for every row: [(text, token infos, finish reason, completion tokens)] in row order."""
    texts, tokens, finish, counts = [""] * n_rows, [[] for _ in range(n_rows)], [None] * n_rows, [0] * n_rows
    left = n_rows
    while left:
        i, out = await sink.get()
        out: StepOut
        if out.finish_reason == "error":
            raise APIError(500, f"generation failed: {out.error}", type_="server_error")
        texts[i] += out.delta
        tokens[i] += out.tokens
        counts[i] += out.num_tokens
        if out.finish_reason:
            finish[i] = out.finish_reason
            left -= 1
    return list(zip(texts, tokens, finish, counts))


def _usage(prompt_tokens: int, results) -> dict:
    done = sum(r[3] for r in results)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}


def _chat_logprob(t) -> dict:
    return {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode("utf-8")),
            "top_logprobs": [{"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))} for s, lp in t.top]}


def _completion_logprobs(tokens) -> dict:
    offsets, pos = [], 0
    for t in tokens:
        offsets.append(pos)
        pos += len(t.token)
    return {"tokens": [t.token for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [dict(t.top) for t in tokens], "text_offset": offsets}
