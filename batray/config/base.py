"""Shared pieces of the stage schemas.

Every schema forbids unknown keys, so a misspelled key fails validation with its path. Defaults that
peers disagree on are explicit fields with the choice documented beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Schema(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


@dataclass(frozen=True)
class PathField:
    """Marks a config field as a filesystem location (`InputPath`, `OutputPath`): the loader makes local
    paths absolute (`batray.config.recipe.absolute_local_paths`), because Ray workers do not run in the
    directory the command was started in. Inputs only when they exist here (a hub id or URL stays)."""

    role: Literal["input", "output"]


InputPath = Annotated[str, PathField("input")]  # a checkpoint, data file/folder, hub id or URL read by a stage
OutputPath = Annotated[str, PathField("output")]  # a folder a stage writes


class RayConfig(Schema):
    """How to reach Ray. `address: null` uses RAY_ADDRESS if set, else starts a local cluster."""

    address: str | None = None
    num_cpus: int | None = Field(default=None, ge=1, description="CPUs of a local cluster")
    num_gpus: int | None = Field(default=None, ge=0, description="GPUs of a local cluster")
    dashboard: bool = Field(default=False, description="a local cluster's web dashboard (its full set of modules)")
    namespace: str = "batray"


class ModelConfig(Schema):
    """The model a stage starts from: a preset name, or a local path / hub name."""

    preset: str | None = "batgpt-tiny"
    path: InputPath | None = None
    tokenizer: InputPath | None = Field(
        default=None, description="tokenizer path or hub name; null: train a byte-level BPE on the corpus"
    )
    vocab_size: int = Field(default=1024, ge=300, description="size of the BPE trained when tokenizer is null")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    chat_template: str | None = Field(
        default=None,
        description="batgpt (BatGPT's format), model (the model's own, required) or a path to a .jinja file; "
        "null: the model's own template, BatGPT's for a model without one",
    )

    @model_validator(mode="after")
    def _one_source(self) -> "ModelConfig":
        if self.preset is None and self.path is None:
            raise ValueError("set either preset or path")
        return self

    @field_validator("chat_template")
    @classmethod
    def _template_choice(cls, v: str | None) -> str | None:
        if v is None or v in ("batgpt", "model") or v.endswith((".jinja", ".j2")):
            return v
        raise ValueError(f"chat_template must be batgpt, model or a path to a .jinja file, not {v!r}")


class LoggingConfig(Schema):
    """Where metrics go and what a person sees (`batray.trackers`, `batray.progress`).

    Every row of a stage's `metrics.jsonl` also goes to each tracker in `report_to`, logged once by the
    driver (the rows come from training rank 0). `wandb` and `mlflow` are optional extras."""

    report_to: list[Literal["tensorboard", "wandb", "mlflow"]] = Field(
        default=["tensorboard"], description="trackers; tensorboard writes <stage>/tb/ beside metrics.jsonl")
    project: str = Field(default="batray", description="wandb project / mlflow experiment")
    run_name: str | None = Field(default=None, description="null: <run_dir name>-<stage>")
    group: str | None = Field(
        default=None, description="run group (wandb group, mlflow tag batray.group); `batray run` sets "
        "<run_dir name>-<config hash> when null")
    tags: list[str] = Field(default=[], description="added to the stage name and config:<hash>")
    entity: str | None = Field(default=None, description="wandb entity (team); null: the account's default")
    mlflow_tracking_uri: str | None = Field(
        default=None, description="null: MLFLOW_TRACKING_URI, else a file store in <run_dir>/mlruns")
    progress: Literal["auto", "bar", "lines"] = Field(
        default="auto", description="auto: a rich bar on a terminal, plain lines otherwise")
    ray_data_progress: bool = Field(default=False, description="show Ray Data's own progress bars and logs")


class DeepSpeedConfig(Schema):
    """DeepSpeed settings; stage 0 still runs through DeepSpeed's engine (plain data parallel)."""

    zero_stage: Literal[0, 1, 2, 3] = 0
    bf16: bool = False
    offload_optimizer: bool = False
    offload_params: bool = False


class ScalingConfig(Schema):
    """Ray Train workers for a training stage, or one worker in the stage's own process (`launch`)."""

    num_workers: int = Field(default=1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(default=1.0, gt=0)
    launch: Literal["ray_train", "in_process"] = Field(
        default="ray_train", description="ray_train: a Ray Train job (workers, placement, any cluster); in_process: "
        "one worker trained in the command's own process, with the same loop, checkpoints and resume, and no Ray "
        "Train controller or worker processes to start (a local machine: about half the time to the first step)")

    @model_validator(mode="after")
    def _in_process_is_one_worker(self) -> "ScalingConfig":
        if self.launch == "in_process" and self.num_workers != 1:
            raise ValueError(f"launch in_process trains one worker in the command's process, not num_workers "
                             f"{self.num_workers}; use launch ray_train for more")
        return self


class OptimConfig(Schema):
    """Optimizer and schedule shared by all training stages."""

    lr: float = Field(default=1e-3, gt=0)
    weight_decay: float = Field(default=0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_steps: int = Field(default=0, ge=0)
    schedule: Literal["cosine", "constant", "linear"] = "cosine"
    min_lr_ratio: float = Field(default=0.1, ge=0, le=1)
    grad_clip: float = Field(default=1.0, ge=0, description="0 disables clipping")


class LoraConfig(Schema):
    """LoRA adapters through peft (`<stage>.lora` of sft, reward and ppo's policy and critic; null: full fine-tuning).

    Checkpoints hold the adapter; `final/adapter/` the adapter and, with `merge`, `final/` the merged model."""

    rank: int = Field(default=8, ge=1, description="r of W + B A * alpha / r")
    alpha: float = Field(default=16.0, gt=0)
    dropout: float = Field(default=0.05, ge=0, lt=1, description="dropout on the adapter's input")
    target_modules: list[str] | None = Field(
        default=None, description="module names to adapt; null: the attention and MLP projections of the model type "
        "(glm, llama, qwen2, mistral, gpt2, ...; other types: every linear layer but the head)")
    modules_to_save: list[str] | None = Field(
        default=None, description="modules trained in full; null: the score/value head of a reward model or critic")
    merge: bool = Field(default=True, description="final/ holds the merged model (loads without peft)")


class TrainConfig(Schema):
    """What every Ray Train stage has: steps, batch, checkpoints, logging, scaling, DeepSpeed."""

    max_steps: int = Field(default=100, ge=1)
    micro_batch_size: int = Field(default=8, ge=1, description="sequences per worker per micro step")
    grad_accum_steps: int = Field(default=1, ge=1)
    seq_len: int = Field(default=128, ge=8)
    ckpt_every: int = Field(default=50, ge=1)
    log_every: int = Field(default=10, ge=1)
    eval_every: int = Field(default=50, ge=1)
    eval_batches: int = Field(default=4, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    optim: OptimConfig = OptimConfig()
    scaling: ScalingConfig = ScalingConfig()
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()

    @model_validator(mode="after")
    def _warmup_fits(self) -> "TrainConfig":
        if self.optim.warmup_steps >= self.max_steps:
            raise ValueError(
                f"optim.warmup_steps ({self.optim.warmup_steps}) must be below max_steps ({self.max_steps})"
            )
        return self
