"""Schemas of evaluation and serving."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from batray.config.base import InputPath, Schema


class RerankConfig(Schema):
    """Bidirectional reranking (issue 11): N answers sampled left to right, ranked by
    (1 - weight) * forward + weight * backward log-likelihood, both per answer token."""

    n: int = Field(default=8, ge=1, le=128, description="candidates sampled per prompt")
    weight: float = Field(default=0.5, ge=0, le=1, description="share of the backward (right-to-left) score; 0: forward-only best-of-N")
    temperature: float = Field(default=1.0, ge=0, le=2, description="sampling temperature of the candidates")
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int = Field(default=64, ge=1)
    seed: int | None = Field(default=0, description="sampling seed (null: a fresh one per call)")


class EvalConfig(Schema):
    """CMMLU / C-Eval evaluation (§4, Tables 1-3)."""

    benchmarks: list[Literal["cmmlu", "ceval"]] = ["cmmlu", "ceval"]
    data: InputPath | None = Field(default=None, description="folder holding cmmlu/ and ceval/; null: data.benchmarks, else the demo benchmarks")
    models: list[InputPath] = Field(default=[], description="checkpoints or endpoint URLs; empty: the run's sft and ppo models")
    shots: list[int] = [5, 0]
    modes: list[Literal["da", "cot", "ppl", "rerank"]] = Field(
        default=["da"], description="da: the answer letter; cot: worked answer; ppl: likeliest option text")
    subjects: list[str] | None = None
    limit: int | None = Field(default=None, ge=1, description="items per subject")
    num_actors: int = Field(default=1, ge=1)
    batch_size: int = Field(default=8, ge=1)
    chat: bool = Field(default=False, description="wrap prompts in the model's chat template")
    max_new_tokens: int = Field(default=128, ge=1, description="cot generation budget")
    rerank: RerankConfig = Field(default=RerankConfig(), description="the `rerank` mode's candidates and weight")


class ServeConfig(Schema):
    """The OpenAI-compatible server."""

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    api_key_env: str | None = Field(
        default="BATRAY_API_KEY", description="env var holding the API key (unset or empty: no key); --api-key wins"
    )
    backend: Literal["auto", "hf", "vllm"] = "auto"
    device: str = Field(default="auto", description="hf backend: cpu, cuda, cuda:1; auto: cuda when available")
    model_name: str | None = Field(default=None, description="the model id clients pass; null: the folder name")
    max_batch_size: int = Field(default=8, ge=1, description="rows (prompts x n) decoded together in one engine batch")
    batch_wait_ms: float = Field(default=5.0, ge=0)
    default_max_tokens: int = Field(default=256, ge=1, description="when a request sets no max_tokens")
    max_rows_per_request: int = Field(
        default=256, ge=1, description="prompts x n one request may ask for (more: 400); split over engine batches"
    )
    max_queued_rows: int = Field(
        default=1024, ge=1, description="rows waiting for a batch, all requests together (more: 429 with Retry-After)"
    )
    max_body_bytes: int = Field(
        default=4 * 2**20, ge=1024, description="largest request body of /v1/completions and /v1/chat/completions (413)"
    )
    rerank: RerankConfig = Field(default=RerankConfig(), description="defaults for requests carrying `rerank`")

    @model_validator(mode="after")
    def _one_request_fits_the_queue(self):
        if self.max_rows_per_request > self.max_queued_rows:
            raise ValueError(f"max_rows_per_request ({self.max_rows_per_request}) must not exceed max_queued_rows "
                             f"({self.max_queued_rows}): such a request could never be queued")
        return self
