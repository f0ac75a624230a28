"""The OpenAI request bodies the server accepts, and OpenAI-style error bodies.

Only the fields batray can honour are declared; unknown fields are ignored (as OpenAI's own server
and vLLM do), except that `extra='allow'` keeps them readable for hooks. Every declared field is
checked to its real range here, at the request boundary, so nothing out of range reaches a batch
shared with other clients: types are strict (`n: true`, `n: 1.5` and `"stream": "yes"` are
refused), limits follow OpenAI's API reference (n <= 128, top_logprobs <= 20, completions
logprobs <= 5, seed a signed 64-bit integer).

`/v1/completions` takes the prompt shapes of OpenAI's legacy API: a string, a list of strings, one
list of token ids or a batch of token-id lists (what lm-evaluation-harness's `local-completions`
sends). `max_tokens: 0` with `echo: true` scores the prompt without generating.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_TOP_LOGPROBS = 20
MAX_COMPLETION_LOGPROBS = 5
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
MAX_STOP = 4

PROMPT_SHAPES = "a string, a list of strings, a list of token ids or a list of token-id lists"


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool = False


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=(), strict=True)

    model: str = Field(max_length=512)
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: list[str] = []  # a string or a list of up to 4 in the request
    seed: int | None = Field(default=None, ge=INT64_MIN, le=INT64_MAX)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(default=None, max_length=512)
    # vLLM's extension: keep generating past end-of-sequence tokens (fixed-length outputs for load tests).
    ignore_eos: bool = False
    # Hook for bidirectional reranking (issue 11): a server built with `create_app(..., rerank=fn)`
    # hands requests carrying this field to `fn`; without a hook such requests get a 400.
    rerank: Any = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v):
        if v is None:
            return []
        if not isinstance(v, (str, list)) or (isinstance(v, list) and not all(isinstance(s, str) for s in v)):
            raise ValueError("stop must be a string or a list of strings")
        stops = [v] if isinstance(v, str) else list(v)
        if len(stops) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return stops

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "user", "assistant", "developer"]
    content: str | list[dict] | None

    def text(self) -> str:
        """Plain text content; a list of parts keeps its `text` parts (images are not supported)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise ValueError(f"only text content parts are supported (got type {part.get('type')!r})")
            parts.append(part["text"])
        return "".join(parts)


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_TOP_LOGPROBS)
    # vLLM's extension: answer with exactly one of these strings. batray scores each choice's
    # log-probability given the prompt and answers with the best (the judge uses it with a local model).
    guided_choice: list[str] | None = Field(default=None, min_length=1, max_length=32)

    @field_validator("guided_choice")
    @classmethod
    def _choices_nonempty(cls, v):
        if v is not None and any(not c for c in v):
            raise ValueError("guided_choice strings must be non-empty")
        return v

    def token_budget(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(default=16, ge=0)
    logprobs: int | None = Field(default=None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    echo: bool = False

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, v):
        """One clear message for every malformed prompt (the union's own errors name its members)."""
        def ids(x) -> bool:
            return isinstance(x, list) and bool(x) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)

        if isinstance(v, str):
            if not v:
                raise ValueError("prompt must not be empty")
            return v
        if not isinstance(v, list) or not v:
            raise ValueError(f"prompt must be {PROMPT_SHAPES} (non-empty)")
        if all(isinstance(p, str) for p in v):
            if any(not p for p in v):
                raise ValueError("prompt strings must not be empty")
            return v
        if ids(v) or all(ids(p) for p in v):
            return v
        raise ValueError(f"prompt must be {PROMPT_SHAPES}; token-id lists must be non-empty lists of integers")

    @model_validator(mode="after")
    def _score_only_needs_echo(self):
        if self.max_tokens == 0 and not self.echo:
            raise ValueError("max_tokens: 0 generates nothing; it is only allowed with echo: true (scoring the prompt)")
        return self

    def prompt_batch(self) -> list[str] | list[list[int]]:
        """The prompts as a list: strings, or token-id lists."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if isinstance(p[0], int):
            return [list(p)]
        return list(p)


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error envelope: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def validation_message(errors: list[dict], body: Any = None) -> tuple[str, str | None]:
    """(one-line message, param) for pydantic's errors of a request body, as OpenAI words them.

    Invalid JSON names the problem and where it is (line and column); a field error names the
    field path without pydantic's union-member tags.
    """
    first = errors[0]
    if first.get("type") == "json_invalid":
        pos = next((p for p in first.get("loc", ()) if isinstance(p, int)), None)
        problem = (first.get("ctx") or {}).get("error", "malformed JSON")
        where = ""
        if isinstance(body, (str, bytes)) and pos is not None:
            text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            line = text.count("\n", 0, pos) + 1
            col = pos - (text.rfind("\n", 0, pos) + 1) + 1
            where = f" at line {line}, column {col}"
        elif pos is not None:
            where = f" at character {pos}"
        return f"the request body is not valid JSON: {problem}{where}", None
    loc = [p for p in first.get("loc", ()) if p != "body"]
    # drop union-member and validator tags (`str`, `list[int]`, `function-after[...]`): they are not fields
    path: list[str] = []
    for p in loc:
        if isinstance(p, int):
            path.append(f"[{p}]" if path else str(p))
        elif "[" in p or p in ("str", "int", "float", "bool", "list", "dict") or p.startswith(("function-", "json-or-python")):
            continue
        else:
            path.append(f".{p}" if path else p)
    param = "".join(path) or None
    msg = str(first.get("msg", "invalid request")).removeprefix("Value error, ").splitlines()[0]
    if first.get("type") in ("model_type", "model_attributes_type", "dict_type") and param is None:
        msg = "the request body must be a JSON object"
    return (f"{param}: {msg}" if param else msg), param
