"""Schemas of the stages that are not Ray Train jobs of their own kind (data, expansion, grow)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from batray.config.base import InputPath, LoraConfig, OutputPath, Schema, TrainConfig
from batray.config.sources import DataSpec, SftColumns


class DemoDataConfig(Schema):
    """The built-in bilingual demo world (`batray data demo`)."""

    seed: int = 0
    num_countries: int = Field(default=24, ge=4)
    num_people: int = Field(default=24, ge=4)
    corpus_repeats: int = Field(default=4, ge=1, description="paraphrases of each fact in the corpus")
    faq_repeats: int = Field(
        default=0, ge=0,
        description="question-and-answer pages per askable question and language in the corpus (held-out facts included)",
    )
    quiz_repeats: int = Field(
        default=0, ge=0,
        description="quiz pages (question, answer cue, the object alone) per askable question and language "
        "in the corpus (held-out facts included)",
    )
    answer_style: Literal["sentence", "short"] = Field(
        default="sentence",
        description="SFT answers: a sentence restating the question's subject, or the object alone",
    )
    held_out_share: float = Field(
        default=0.15, ge=0, le=0.5, description="share of facts stated in the corpus but never asked in sft/prompts"
    )
    unseen_share: float = Field(
        default=0.1, ge=0, le=0.5, description="share of facts stated nowhere (hallucination probe)"
    )


class DataConfig(Schema):
    """Where a run's data comes from; null paths mean the demo data generated into the run dir."""

    demo: DemoDataConfig = DemoDataConfig()
    corpus: DataSpec | None = None
    sft: DataSpec | None = None
    prompts: DataSpec | None = None
    benchmarks: InputPath | None = None
    held_out_fraction: float = Field(default=0.05, ge=0, lt=1)


class PretrainConfig(TrainConfig):
    """Bidirectional autoregressive pretraining (Eq. 1)."""

    direction: Literal["both", "l2r"] = Field(
        default="both", description="both: Eq. 1 (l2r and r2l terms); l2r: a plain causal LM"
    )
    r2l_share: float = Field(
        default=1.0, ge=0, le=1, description="share of sequences also learned right to left (1.0: every one)"
    )
    init_from: InputPath | None = Field(default=None, description="checkpoint to continue from; null: model.path, else from scratch")


class SftConfig(TrainConfig, SftColumns):
    """Instruction tuning (Eq. 2)."""

    data: DataSpec | None = Field(default=None, description="SFT rows in any layout batray reads; null: data.sft")
    loss_on: Literal["last", "all"] = Field(default="last", description="assistant turns that carry loss")
    packing: bool = Field(
        default=False, description="several samples per seq_len row (best fit, attention kept within each); "
        "micro_batch_size then counts rows"
    )
    init_from: InputPath | None = Field(default=None, description="null: the latest model stage before sft (pretrain/grow/expand), else model.path")
    lora: LoraConfig | None = Field(default=None, description="LoRA adapters instead of full fine-tuning")


class ExpandConfig(Schema):
    """Width (Eqs. 5-7) and depth (Alg. 1 stacking) expansion. Null sizes stay as they are."""

    src: InputPath | None = Field(default=None, description="null: the latest model stage before expand (pretrain/grow), else model.path")
    dst: OutputPath | None = Field(default=None, description="null: <run_dir>/expand/final")
    hidden_size: int | None = Field(default=None, ge=1)
    intermediate_size: int | None = Field(default=None, ge=1)
    num_heads: int | None = Field(default=None, ge=1)
    num_kv_heads: int | None = Field(default=None, ge=1)
    num_layers: int | None = Field(default=None, ge=1)
    method: Literal["fpi", "exact"] = "exact"
    stack: Literal["copy", "zero"] = "zero"
    noise_std: float = Field(default=0.0, ge=0, description="exact method: cancelling noise on the copies")
    seed: int = 0
    probe: bool = Field(default=True, description="measure the logit deviation (loads both models, one at a time)")
    probe_tokens: int = Field(default=64, ge=1)
    max_shard_mb: float = Field(default=2048, gt=0, description="output shard size; each shard is written by one writer")
    num_writers: int | None = Field(default=None, ge=1, description="shard-writer actors; null: one per CPU of the Ray cluster, at most one per "
                                       "shard; with no cluster to join and at most 2 CPUs here, this process writes them in turn")


class GrowConfig(Schema):
    """Algorithm 1: train depth L/2^k, stack, train, ... until depth L; optionally a width step."""

    stack_steps: int = Field(default=1, ge=0, description="k: the first phase has num_layers / 2^k layers")
    steps_per_phase: int = Field(default=50, ge=1)
    width: ExpandConfig | None = Field(default=None, description="optional width step after the last stack")
    stack: Literal["copy", "zero"] = "zero"
    compare_from_scratch: bool = Field(default=False, description="also train the final size from scratch, for the same parameters x tokens")
