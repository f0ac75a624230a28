"""The OpenAI-compatible HTTP server: `/v1/models`, `/v1/chat/completions`, `/v1/completions`.

`create_app(served)` builds a FastAPI app around a `ServedModel` (a tokenizer plus a generator, HF or
vLLM). Every request becomes rows of a `BatchingEngine`, so concurrent clients share batches. Chat
prompts are rendered with the checkpoint's chat template and its generation prompt, and generation
stops at the template's end-of-turn token; plain completions are encoded as the tokenizer encodes
text (its BOS first: `<|l2r|>` for a batray checkpoint). Token-id prompts are taken as they are.
Errors use OpenAI's envelope (`{"error": {"message", "type", "param", "code"}}`), one line each,
so the official `openai` client raises its usual exceptions.

Limits that keep one client from hurting the others: a request asks for at most
`max_rows_per_request` rows (prompts x n, else 400); at most `max_queued_rows` rows wait (else 429
with Retry-After); a body is at most `max_body_bytes` (413, checked from Content-Length and while
it streams in, before the API key); a client that disconnects, streaming or not, has its rows
cancelled; a stop signal answers every in-flight request with 503 (`server.ServeServer`).

`echo: true` with `logprobs` reports the prompt's tokens too (first logprob `null`), then the
completion's, as OpenAI's legacy completions and vLLM do; with `max_tokens: 0` it only scores the
prompt (loglikelihood evaluation, e.g. lm-evaluation-harness's `local-completions`).

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
from dataclasses import dataclass, field

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from batray.http_limits import BodyLimit
from batray.models.chat import SampleError, chat_prompt_ids
from batray.serve.batching import BatchingEngine, EngineStopped, QueueFull, Submission
from batray.serve.generation import GenRow, StepOut, TokenInfo
from batray.serve.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    error_body,
    validation_message,
)

log = logging.getLogger(__name__)

RerankHook = Callable[..., Awaitable[dict]]
SMALL_BODY_BYTES = 64 * 1024  # routes other than the two completions routes take no real body


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
                 code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.body, self.headers = status, error_body(message, type_, param, code), headers


class ClientGone(Exception):
    """The client closed the connection before its answer was ready (nobody reads the response)."""


@dataclass
class RowResult:
    text: str = ""
    tokens: list[TokenInfo] = field(default_factory=list)
    finish: str | None = None
    count: int = 0  # completion tokens
    prompt: list[TokenInfo] | None = None  # prompt tokens with logprobs (echo)


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
        from batray.serve.vllm_backend import (
            VLLMGenerator,  # lazy: optional CUDA-only extra
        )

        tokenizer = load_tokenizer(checkpoint, chat_template=chat_template)
        generator = VLLMGenerator(checkpoint, tokenizer)
    else:
        from batray.models.loading import load_model_and_tokenizer
        from batray.serve.generation import HFGenerator

        model, tokenizer = load_model_and_tokenizer(checkpoint, chat_template=chat_template, device=device)
        generator = HFGenerator(model, tokenizer, device=device)
    return ServedModel(served_name, tokenizer, generator, default_max_tokens)


def create_app(served: ServedModel, *, api_key: str | None = None, max_batch_size: int = 8,
               batch_wait_ms: float = 5.0, max_rows_per_request: int = 256, max_queued_rows: int = 1024,
               max_body_bytes: int = 4 * 2**20, rerank: RerankHook | None = None,
               on_ready: Callable[[], None] | None = None) -> FastAPI:
    if max_rows_per_request > max_queued_rows:
        raise ValueError(f"max_rows_per_request ({max_rows_per_request}) must not exceed max_queued_rows ({max_queued_rows})")
    engine = BatchingEngine(served.generator, max_batch_size=max_batch_size, batch_wait_ms=batch_wait_ms,
                            max_queued_rows=max_queued_rows)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        if on_ready is not None:
            on_ready()
        yield
        await engine.stop()

    app = FastAPI(title="batray", lifespan=lifespan)
    app.add_middleware(BodyLimit, limits={"/v1/completions": max_body_bytes, "/v1/chat/completions": max_body_bytes},
                       default=SMALL_BODY_BYTES, error_body=_too_large)
    app.state.engine = engine
    app.state.served = served

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return JSONResponse(exc.body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, exc: ClientGone):
        return JSONResponse(error_body("the client disconnected"), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        message, param = validation_message(exc.errors(), exc.body)
        return JSONResponse(error_body(message, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        if exc.status_code == 413:  # a body that passed its limit while streaming in (BodyLimit)
            return JSONResponse(_too_large(str(exc.detail)), status_code=413, headers={"Connection": "close"})
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(exc.detail), type_), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

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

    def check_rows(n_prompts: int, n: int) -> None:
        total = n_prompts * n
        if total > max_rows_per_request:
            raise APIError(400, f"this request asks for {total} completions ({n_prompts} prompts x n={n}); the limit is "
                                f"{max_rows_per_request} per request (serve.max_rows_per_request): split it",
                           param="n" if n > 1 else "prompt", code="too_many_rows")

    @app.api_route("/v1/models", methods=["GET", "HEAD"], dependencies=[Depends(check_key)])
    async def models():
        return {"object": "list", "data": [
            {"id": served.name, "object": "model", "created": 0, "owned_by": "batray",
             "max_model_len": served.context_len}]}

    @app.api_route("/health", methods=["GET", "HEAD"])
    async def health():
        return {"status": "ok", "queued_rows": engine.queued_rows, "running_rows": engine.running_rows,
                "batches_run": engine.batches_run, "rows_cancelled": engine.rows_cancelled}

    @app.post("/v1/chat/completions", dependencies=[Depends(check_key)])
    async def chat(req: ChatCompletionRequest, request: Request):
        check_model(req.model)
        if req.rerank is not None:
            return await _rerank(req)
        check_rows(1, req.n)
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
        sub = _submit(rows)
        if req.stream:
            return _sse(_chat_stream(rid, created, sub, len(prompt_ids), req))
        results = await _collect(sub, request)
        choices = []
        for i, res in enumerate(results):
            choice = {"index": i, "message": {"role": "assistant", "content": res.text}, "finish_reason": res.finish,
                      "logprobs": {"content": [_chat_logprob(t) for t in res.tokens]} if req.logprobs else None}
            choices.append(choice)
        return {"id": rid, "object": "chat.completion", "created": created, "model": served.name,
                "choices": choices, "usage": _usage(len(prompt_ids), results)}

    @app.post("/v1/completions", dependencies=[Depends(check_key)])
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        if req.rerank is not None:
            return await _rerank(req)
        batch = req.prompt_batch()
        check_rows(len(batch), req.n)
        prompts = _completion_prompts(batch)
        echoed = [_echo_text(p, ids) for p, ids in zip(batch, prompts)] if req.echo else None
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        top = req.logprobs
        prompt_lp = req.echo and top is not None
        rows = [row for p in prompts for row in _rows(p, req, req.max_tokens, top, prompt_logprobs=prompt_lp)]
        sub = _submit(rows)
        if req.stream:
            return _sse(_completion_stream(rid, created, sub, echoed, req))
        results = await _collect(sub, request)
        choices = []
        for i, res in enumerate(results):
            prefix = echoed[i // req.n] if echoed else ""
            logprobs = _completion_logprobs(res.prompt or [], res.tokens, len(prefix)) if top is not None else None
            choices.append({"index": i, "text": prefix + res.text, "finish_reason": res.finish, "logprobs": logprobs})
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

    def _echo_text(prompt: str | list[int], ids: list[int]) -> str:
        """What `echo` puts before the completion: the prompt as the client sent it."""
        return prompt if isinstance(prompt, str) else _decode(ids)

    def _completion_prompts(batch: list[str] | list[list[int]]) -> list[list[int]]:
        if isinstance(batch[0], list):  # token ids, taken as they are
            vocab = getattr(served.generator, "vocab_size", None) or len(served.tokenizer)
            vocab = min(vocab, len(served.tokenizer))
            for i, ids in enumerate(batch):
                bad = next((t for t in ids if not 0 <= t < vocab), None)
                if bad is not None:
                    where = f"prompt[{i}]" if len(batch) > 1 else "prompt"
                    raise APIError(400, f"{where} has token id {bad}, outside the vocabulary [0, {vocab})", param="prompt")
            return [list(ids) for ids in batch]
        return [served.tokenizer(t)["input_ids"] for t in batch]  # BOS by the tokenizer, as vLLM does

    def _rows(prompt_ids: list[int], req, max_tokens: int | None, top: int | None,
              prompt_logprobs: bool = False) -> list[GenRow]:
        room = served.context_len - len(prompt_ids)
        budget = served.default_max_tokens if max_tokens is None else max_tokens
        if room < 0 or (room == 0 and budget > 0):
            raise APIError(400, f"the prompt is {len(prompt_ids)} tokens; the model's context is {served.context_len}",
                           param="messages" if isinstance(req, ChatCompletionRequest) else "prompt",
                           code="context_length_exceeded")
        budget = min(budget, room)  # a larger max_tokens is cut to what the context leaves
        # n rows of one request differ only by seed; seeds wrap into torch's unsigned 64-bit range
        return [GenRow(list(prompt_ids), budget, req.temperature, req.top_p, list(req.stop),
                       None if req.seed is None else (req.seed + i) % 2**64, top,
                       prompt_logprobs=prompt_logprobs, ignore_eos=req.ignore_eos) for i in range(req.n)]

    def _submit(rows: list[GenRow]) -> Submission:
        try:
            return engine.submit(rows)
        except QueueFull as e:
            raise APIError(429, str(e), type_="rate_limit_error", code="queue_full",
                           headers={"Retry-After": str(e.retry_after_s)}) from None
        except EngineStopped:
            raise APIError(503, "the server is shutting down", type_="server_error", code="shutting_down") from None

    def _raise_for(out: StepOut) -> None:
        if out.status == 503:
            raise APIError(503, out.error or "the server is shutting down", type_="server_error", code="shutting_down")
        raise APIError(500, f"generation failed: {out.error}", type_="server_error")

    async def _watch_disconnect(request: Request, sub: Submission) -> None:
        """Cancel the submission when the client goes away (uvicorn's receive() answers http.disconnect)."""
        while (await request.receive())["type"] != "http.disconnect":
            pass
        engine.cancel(sub)
        sub.sink.put_nowait((-1, None))

    async def _collect(sub: Submission, request: Request) -> list[RowResult]:
        """Wait for every row of a non-streaming request, cancelling them if the client disconnects."""
        results = [RowResult() for _ in sub.rows]
        left = len(sub.rows)
        watcher = asyncio.create_task(_watch_disconnect(request, sub))
        try:
            while left:
                i, out = await sub.sink.get()
                if out is None:
                    raise ClientGone()
                if out.finish_reason == "error":
                    _raise_for(out)
                res = results[i]
                if out.prompt is not None:
                    res.prompt = out.prompt
                res.text += out.delta
                res.tokens += out.tokens
                res.count += out.num_tokens
                if out.finish_reason:
                    res.finish = out.finish_reason
                    left -= 1
            return results
        finally:
            watcher.cancel()
            engine.cancel(sub)  # on an error or a disconnect: the other rows stop too (no-op once done)

    async def _stream(sub: Submission):
        left = len(sub.rows)
        try:
            while left:
                i, out = await sub.sink.get()
                if out.finish_reason == "error":
                    _raise_for(out)
                if out.finish_reason:
                    left -= 1
                yield i, out
        finally:
            engine.cancel(sub)  # the client left early (Starlette cancels the stream), failed, or done

    async def _chat_stream(rid, created, sub, n_prompt, req):
        base = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": served.name}
        for i in range(len(sub.rows)):
            yield {**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                        "finish_reason": None, "logprobs": None}]}
        counts = [0] * len(sub.rows)
        async for i, out in _stream(sub):
            counts[i] += out.num_tokens
            lp = {"content": [_chat_logprob(t) for t in out.tokens]} if req.logprobs and out.tokens else None
            if out.delta or lp:
                yield {**base, "choices": [{"index": i, "delta": {"content": out.delta}, "finish_reason": None,
                                            "logprobs": lp}]}
            if out.finish_reason:
                yield {**base, "choices": [{"index": i, "delta": {}, "finish_reason": out.finish_reason,
                                            "logprobs": None}]}
        if req.include_usage:
            done = sum(counts)
            yield {**base, "choices": [], "usage": {"prompt_tokens": n_prompt, "completion_tokens": done,
                                                    "total_tokens": n_prompt + done}}

    async def _completion_stream(rid, created, sub, echoed, req):
        base = {"id": rid, "object": "text_completion", "created": created, "model": served.name}
        prompt_lp = req.echo and req.logprobs is not None
        if echoed and not prompt_lp:  # the echoed prompt comes first; with logprobs, once they are known
            for i in range(len(sub.rows)):
                yield {**base, "choices": [{"index": i, "text": echoed[i // req.n], "finish_reason": None,
                                            "logprobs": None}]}
        counts, n_prompt = [0] * len(sub.rows), sum(len(r.prompt_ids) for r in sub.rows[:: req.n])
        async for i, out in _stream(sub):
            counts[i] += out.num_tokens
            if out.prompt is not None:
                yield {**base, "choices": [{"index": i, "text": echoed[i // req.n], "finish_reason": None,
                                            "logprobs": _completion_logprobs(out.prompt, [], 0)}]}
                continue
            lp = _completion_logprobs([], out.tokens, 0) if req.logprobs is not None and out.tokens else None
            if out.delta or lp or out.finish_reason:
                yield {**base, "choices": [{"index": i, "text": out.delta, "finish_reason": out.finish_reason,
                                            "logprobs": lp}]}
        if req.include_usage:
            done = sum(counts)
            yield {**base, "choices": [], "usage": {"prompt_tokens": n_prompt, "completion_tokens": done,
                                                    "total_tokens": n_prompt + done}}

    return app


def _too_large(message: str) -> dict:
    return error_body(f"{message} (serve.max_body_bytes)", code="body_too_large")


def _sse(events) -> StreamingResponse:
    async def body():
        try:
            async for event in events:
                yield f"data: {json.dumps(event, ensure_ascii=False)}\n\n"
        except APIError as e:
            yield f"data: {json.dumps(e.body)}\n\n"
        yield "data: [DONE]\n\n"

    return StreamingResponse(body(), media_type="text/event-stream")


def _usage(prompt_tokens: int, results: list[RowResult]) -> dict:
    done = sum(r.count for r in results)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}


def _chat_logprob(t) -> dict:
    return {"token": t.token, "logprob": t.logprob, "bytes": list(t.token.encode("utf-8")),
            "top_logprobs": [{"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))} for s, lp in t.top]}


def _completion_logprobs(prompt: list[TokenInfo], tokens: list[TokenInfo], completion_offset: int) -> dict:
    """OpenAI's legacy `logprobs` object over the prompt tokens (echo; the first has no logprob) then
    the completion's. Offsets: cumulative over the prompt's token texts, then from `completion_offset`."""
    offsets, pos = [], 0
    for t in prompt:
        offsets.append(pos)
        pos += len(t.token)
    pos = completion_offset
    for t in tokens:
        offsets.append(pos)
        pos += len(t.token)
    every = prompt + tokens
    return {"tokens": [t.token for t in every], "token_logprobs": [t.logprob for t in every],
            "top_logprobs": [None if t.logprob is None else dict(t.top) for t in every], "text_offset": offsets}
