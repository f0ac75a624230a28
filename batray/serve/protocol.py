"""The OpenAI request bodies the server accepts, and OpenAI-style error bodies.

Only the fields batray can honour are declared; unknown fields are ignored (as OpenAI's own server
and vLLM do), except that `extra='allow'` keeps them readable for hooks. Field limits follow
OpenAI's API reference (n <= 128, top_logprobs <= 20, completions logprobs <= 5).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TOP_LOGPROBS = 20


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: str
    temperature: float = Field(default=1.0, ge=0, le=2)
    top_p: float = Field(default=1.0, gt=0, le=1)
    n: int = Field(default=1, ge=1, le=128)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: list[str] = []  # a string or a list of up to 4 in the request
    seed: int | None = None
    stream: bool = False
    user: str | None = None
    # Hook for bidirectional reranking (issue 11): a server built with `create_app(..., rerank=fn)`
    # hands requests carrying this field to `fn`; without a hook such requests get a 400.
    rerank: Any = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v):
        if v is None:
            return []
        stops = [v] if isinstance(v, str) else list(v)
        if len(stops) > 4:
            raise ValueError("at most 4 stop sequences")
        if any(not s for s in stops):
            raise ValueError("stop sequences must be non-empty")
        return stops


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

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
    prompt: str | list[str] | list[int] = Field(min_length=1)
    max_tokens: int | None = Field(default=16, ge=1)
    logprobs: int | None = Field(default=None, ge=0, le=5)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _nonempty(cls, v):
        if isinstance(v, str) and not v:
            raise ValueError("prompt must not be empty")
        return v


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error envelope: `{"error": {"message", "type", "param", "code"}}`."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
