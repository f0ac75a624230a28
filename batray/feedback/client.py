"""The async judging client: the official `openai` AsyncOpenAI against any OpenAI-compatible endpoint.

Retries are ours (the SDK's are turned off) so that every attempt is counted against the budget:
429, 5xx, 408, timeouts, connection errors and malformed bodies are retried with exponential backoff
(honouring `Retry-After`), up to `max_retries` times; other 4xx fail the question at once. A
semaphore caps requests in flight. The API key is held in a `Secret`, whose repr never shows it.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass

import openai

from batray.feedback.judge import Answer, read_answer


class Secret:
    """An API key that does not print itself (repr, str, logs, tracebacks, pickled task specs shown in Ray)."""

    def __init__(self, value: str | None):
        self._value = value

    def get(self) -> str | None:
        return self._value

    def __repr__(self) -> str:
        return "Secret(****)" if self._value else "Secret(None)"

    __str__ = __repr__


class JudgeError(Exception):
    """A question could not be answered; the message is the failure reason written to the output."""


class Budget:
    """At most `limit` requests in all (None: unlimited). A pair reserves its first attempts up front,
    so a pair is either asked completely or not at all; retries draw one request each."""

    def __init__(self, limit: int | None):
        self.left = limit
        self.used = 0

    def take(self, n: int = 1) -> bool:
        if self.left is not None and self.left < n:
            return False
        if self.left is not None:
            self.left -= n
        self.used += n
        return True


@dataclass
class EndpointSettings:
    url: str
    model: str
    concurrency: int = 8
    timeout_s: float = 60.0
    max_retries: int = 5
    backoff_s: float = 0.5
    max_backoff_s: float = 20.0
    top_logprobs: int = 20  # 0: do not ask for log-probabilities (parse text only)
    max_answer_tokens: int = 8
    guided_choice: bool = False  # send vLLM's `guided_choice` with the option numbers (batray serve, vLLM)


def _retryable_status(status: int) -> bool:
    return status in (408, 409, 429) or status >= 500


class JudgeClient:
    def __init__(self, settings: EndpointSettings, api_key: Secret, budget: Budget):
        self.s = settings
        self.budget = budget
        self.client = openai.AsyncOpenAI(base_url=settings.url, api_key=api_key.get() or "EMPTY", max_retries=0,
                                         timeout=settings.timeout_s)
        self.sem = asyncio.Semaphore(settings.concurrency)
        self.use_logprobs = settings.top_logprobs > 0
        self.stats: Counter = Counter()  # requests, retries, and failures by kind

    async def close(self) -> None:
        await self.client.close()

    async def ask(self, messages: list[dict], options: tuple[str, ...], words, what: str) -> Answer:
        """One question -> its `Answer`. The first attempt was reserved by the caller; retries take budget."""
        last = ""
        for attempt in range(self.s.max_retries + 1):
            if attempt and not self.budget.take():
                raise JudgeError(f"budget exhausted while retrying {what} (last error: {last})")
            self.stats["requests"] += 1
            self.stats["retries"] += bool(attempt)
            try:
                text, tokens = await self._request(messages, len(options))
            except _Retry as r:
                last = str(r)
                self.stats[r.kind] += 1
                await asyncio.sleep(self._backoff(attempt, r.retry_after))
                continue
            answer = read_answer(text, tokens, options, words)
            if answer is None:
                raise JudgeError(f"unparsable answer to {what}: {text[:80]!r}")
            return answer
        raise JudgeError(f"endpoint error after {self.s.max_retries + 1} attempts on {what}: {last}")

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.s.max_backoff_s)
        return min(self.s.backoff_s * 2**attempt, self.s.max_backoff_s) * random.uniform(0.5, 1.0)

    async def _request(self, messages: list[dict], n_options: int) -> tuple[str, list | None]:
        kwargs = dict(model=self.s.model, messages=messages, temperature=0.0, max_tokens=self.s.max_answer_tokens,
                      seed=0)
        if self.use_logprobs:
            kwargs.update(logprobs=True, top_logprobs=self.s.top_logprobs)
        if self.s.guided_choice:
            kwargs["extra_body"] = {"guided_choice": [str(i + 1) for i in range(n_options)]}
        try:
            async with self.sem:
                resp = await self.client.chat.completions.create(**kwargs)
        except openai.APITimeoutError:
            raise _Retry("timeout", f"no answer within {self.s.timeout_s:g}s") from None
        except openai.APIConnectionError as e:
            raise _Retry("connection_error", f"connection error ({type(e.__cause__ or e).__name__})") from None
        except openai.APIStatusError as e:
            if _retryable_status(e.status_code):
                raise _Retry(f"http_{e.status_code}", f"HTTP {e.status_code}", _retry_after(e)) from None
            if e.status_code == 400 and self.use_logprobs and "logprob" in str(e).lower():
                self.use_logprobs = False  # this endpoint refuses logprobs: parse text from now on
                raise _Retry("no_logprobs", "endpoint refused logprobs; retrying without") from None
            raise JudgeError(f"HTTP {e.status_code} from the endpoint: {_short(e)}") from None
        except (openai.APIResponseValidationError, ValueError, TypeError) as e:
            raise _Retry("malformed", f"malformed response ({type(e).__name__})") from None
        try:
            choice = resp.choices[0]
            text = choice.message.content
            if not isinstance(text, str):
                raise TypeError("content is not a string")
            tokens = None
            content = getattr(choice.logprobs, "content", None) if choice.logprobs is not None else None
            if content:
                tokens = [(t.token, float(t.logprob), [(a.token, float(a.logprob)) for a in (t.top_logprobs or [])])
                          for t in content]
        except (AttributeError, IndexError, TypeError, ValueError) as e:
            raise _Retry("malformed", f"malformed response ({type(e).__name__}: {e})") from None
        return text, tokens


class _Retry(Exception):
    def __init__(self, kind: str, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.kind, self.retry_after = kind, retry_after


def _retry_after(e: openai.APIStatusError) -> float | None:
    try:
        value = e.response.headers.get("retry-after")
        return float(value) if value is not None else None
    except (AttributeError, ValueError):
        return None


def _short(e: openai.APIStatusError) -> str:
    """The server's error message (the SDK hands over the `error` object of OpenAI's envelope)."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        inner = body.get("error") if isinstance(body.get("error"), dict) else body
        if inner.get("message"):
            return str(inner["message"])[:200]
    return str(e)[:200]
