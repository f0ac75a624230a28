"""Schemas of the preference and RL stages: pairs, label, annotate, prefs, reward, ppo."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from batray.config.base import DeepSpeedConfig, InputPath, LoraConfig, Schema, TrainConfig
from batray.config.sources import DataSpec, PreferenceColumns, PromptColumns


class SamplingConfig(Schema):
    temperature: float = Field(default=1.0, ge=0)
    top_p: float = Field(default=1.0, gt=0, le=1)
    max_new_tokens: int = Field(default=48, ge=1)


class PairsConfig(PromptColumns):
    """Two responses A and B per prompt (§3.3)."""

    prompts: DataSpec | None = Field(default=None, description="prompt rows in any layout batray reads; null: data.prompts")
    max_prompts: int | None = Field(default=None, ge=1)
    model_a: InputPath | None = Field(default=None, description="null: the latest model stage before pairs (sft)")
    model_b: InputPath | None = Field(
        default=None,
        description="null: model_a sampled twice; a checkpoint path; an http(s) endpoint URL; or `world` "
        "(batray run only: the demo world's reference answers served as an endpoint)",
    )
    model_b_name: str | None = Field(default=None, description="model id at a model_b endpoint; null: its first model")
    shuffle_sides: bool = Field(
        default=True, description="with two different models, put each model's response on side A or B by a per-pair coin"
    )
    samples_per_prompt: int = Field(
        default=1, ge=1,
        description="pairs per prompt, each with its own samples; ids `<prompt's pair id>#<k>` for k >= 1, and the "
        "reward stage's held-out split keeps a prompt's pairs together",
    )
    num_engines: int = Field(default=1, ge=1)
    engine_cpus: float = Field(default=1.0, gt=0)
    sampling: SamplingConfig = SamplingConfig()
    seed: int = 0


class EndpointConfig(Schema):
    """An OpenAI-compatible judge endpoint. The API key is read from the environment, never stored."""

    url: str
    model: str
    api_key_env: str | None = "OPENAI_API_KEY"
    concurrency: int = Field(default=8, ge=1, description="requests in flight to this endpoint, all labelers together")
    timeout_s: float = Field(default=60.0, gt=0, description="per request")
    max_retries: int = Field(default=5, ge=0, description="on 429, 5xx, timeouts, connection errors, malformed bodies")
    backoff_s: float = Field(default=0.5, ge=0, description="first retry delay; doubles per attempt (Retry-After wins)")
    max_backoff_s: float = Field(default=20.0, ge=0)
    top_logprobs: int = Field(default=20, ge=0, le=20, description="0: never ask for logprobs, parse the text")
    max_answer_tokens: int = Field(default=8, ge=1)
    guided_choice: bool = Field(
        default=False, description="send vLLM's guided_choice extension (batray serve and vLLM accept it; OpenAI does not)"
    )


class LabelConfig(Schema):
    """AI feedback (§3.3): labeler actors ask judges the annotators' questions."""

    endpoints: list[EndpointConfig] = []
    local_judge: Literal["sft", "world", "none"] = Field(
        default="sft",
        description="with no endpoints, the judge served on 127.0.0.1: the run's SFT model (`batray serve`), "
        "the demo world's fact checker (an OpenAI-compatible server), or none (endpoints required)",
    )
    both_orders: bool = True
    on_order_disagreement: Literal["tie", "lower_confidence"] = "tie"
    templates: InputPath | None = Field(default=None, description="folder overriding the judge templates")
    max_requests: int | None = Field(default=None, ge=1, description="budget: requests in all, per run and endpoint")
    num_labelers: int = Field(default=1, ge=1)
    labeler_cpus: float = Field(default=0.25, gt=0, description="labelers wait on the network; a fraction of a CPU")
    chunk_size: int = Field(default=128, ge=1, description="pairs per labeler call; output is saved after each")
    pairs: InputPath | None = Field(default=None, description="pairs parquet/jsonl; null: the pairs stage's output")


class AnnotateConfig(Schema):
    """The human annotation web app (Fig. 1)."""

    db: str | None = Field(default=None, description="SQLAlchemy URL; null: SQLite in <run_dir>/annotate")
    tasks: InputPath | None = Field(default=None, description="pairs parquet/jsonl to annotate; null: <run_dir>/pairs")
    host: str = "127.0.0.1"
    port: int = Field(default=8700, ge=1, le=65535)
    overlap: float = Field(default=0.1, ge=0, le=1, description="share of tasks given to two annotators")
    lease_minutes: float = Field(default=30.0, gt=0, description="how long a handed-out task is held for its annotator")
    max_body_bytes: int = Field(default=64 * 1024, ge=16 * 1024, description="largest /api/labels body (413); other routes take 4 KiB")
    seed: int = Field(default=0, description="fixes each task's left/right order and overlap draw")


class PrefsConfig(Schema):
    """Consolidation of AI and human labels into d in {-1, 0, 1}."""

    unacceptable_loses: bool = Field(default=True, description="an unacceptable response loses to an acceptable one")
    human_overrides_ai: bool = True
    min_confidence: float = Field(default=0.0, ge=0, le=1, description="AI labels below this are dropped (counted)")
    human_labels: InputPath | None = Field(
        default=None, description="exported human labels; null: <run_dir>/annotate/human.parquet when it exists"
    )
    ai_labels: InputPath | None = Field(default=None, description="AI labels; null: the label stage's output (when label is in stages or it exists)")


class RewardConfig(TrainConfig, PreferenceColumns):
    """Reward model with the paper's hinge loss (Eq. 3)."""

    margin: float = Field(default=1.0, gt=0)
    tie_loss: Literal["none", "band", "rao_kupper"] = Field(
        default="none", description="none: Eq. 3 as written (ties carry no gradient)"
    )
    tie_band: float = Field(
        default=0.25, ge=0,
        description="tau of the band tie loss, below the margin; the initial rao_kupper threshold; tie accuracy's band",
    )
    data: DataSpec | None = Field(
        default=None,
        description="preference rows in any layout batray reads; null: <run_dir>/prefs/preferences.parquet",
    )
    init_from: InputPath | None = Field(
        default=None, description="null: the latest model stage before reward (sft); a causal LM or reward checkpoint, or a preset (random init)"
    )
    held_out_fraction: float = Field(default=0.1, ge=0, lt=1, description="pairs held out for evaluation (by pair_id hash)")
    lora: LoraConfig | None = Field(default=None, description="LoRA adapters (the score head trained in full)")
    packing: bool = Field(
        default=False, description="a micro batch's 2B sequences packed whole into fewer rows of its longest "
        "length (attention kept within each); same rewards as padded rows, fewer rows to compute"
    )

    @model_validator(mode="after")
    def _band_below_margin(self) -> "RewardConfig":
        if self.tie_loss == "band" and self.tie_band >= self.margin:
            raise ValueError(f"tie_band ({self.tie_band}) must be below margin ({self.margin})")
        if self.tie_loss == "rao_kupper" and self.tie_band <= 0:
            raise ValueError("tie_band must be above 0 with tie_loss rao_kupper (it is the initial threshold)")
        return self


class RoleConfig(Schema):
    """Placement of one PPO role."""

    num_actors: int = Field(default=1, ge=1)
    num_cpus: float = Field(default=1.0, gt=0)
    num_gpus: float = Field(default=0.0, ge=0)
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        default="PACK", description="placement-group strategy of the role's own group (colocate: false)"
    )
    max_restarts: int = Field(default=0, ge=0, description="Ray restarts of a dead actor of this role")


class RewardRoleConfig(RoleConfig):
    """The reward actor(s): a reward model (Eq. 3's R), or a rule reward for tests and demos."""

    kind: Literal["model", "rule"] = "model"
    rule: Literal["token_fraction"] = Field(
        default="token_fraction", description="token_fraction: share of response tokens in target_text's tokens"
    )
    target_text: str | None = None
    max_restarts: int = Field(default=2, ge=0)

    @model_validator(mode="after")
    def _rule_has_target(self) -> "RewardRoleConfig":
        if self.kind == "rule" and not self.target_text:
            raise ValueError("kind rule (token_fraction) needs target_text")
        return self


class RolloutRoleConfig(RoleConfig):
    """Rollout engines: vLLM on GPU (tensor parallel), transformers generate on CPU; one interface."""

    backend: Literal["auto", "hf", "vllm"] = "auto"
    tensor_parallel_size: int = Field(default=1, ge=1)
    max_restarts: int = Field(default=2, ge=0)


class PpoConfig(PromptColumns):
    """PPO with a KL penalty and a pretraining term (Eq. 4). Every contested default is a field."""

    steps: int = Field(default=20, ge=1)
    rollout_batch_size: int = Field(default=16, ge=1, description="prompts per PPO step")
    micro_batch_size: int = Field(default=8, ge=1)
    ppo_epochs: int = Field(default=1, ge=1)
    num_minibatches: int = Field(default=1, ge=1)
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=24)
    actor_lr: float = Field(default=1e-5, gt=0)
    critic_lr: float = Field(default=5e-5, gt=0)
    grad_clip: float = Field(default=1.0, ge=0)
    deepspeed: DeepSpeedConfig = Field(
        default=DeepSpeedConfig(),
        description="the policy's and critic's DeepSpeed engines: ZeRO stage 0-3 across each role's ranks, bf16 on GPU",
    )
    offload_between_phases: bool = Field(
        default=False,
        description="GPU, colocated roles: the policy's and critic's Adam moments and ZeRO fp32 masters move to host "
        "memory while the engines generate, and vLLM engines sleep while the trainers run; needs "
        "deepspeed.zero_stage >= 1; no effect on CPU",
    )
    # Eq. 4 terms
    kl_coef: float = Field(default=0.05, ge=0, description="lambda_KL")
    kl_estimator: Literal["k1", "k2", "k3"] = "k1"
    kl_clamp: float | None = Field(
        default=None, gt=0,
        description="bound on the per-token KL estimate of Eq. 4's penalty, [-c, c]; null: none (verl bounds k3 at 10)",
    )
    log_ratio_clamp: float | None = Field(
        default=None, gt=0,
        description="bound on log-ratios before exp(): log(pi/pi_old) in the PPO ratio and log(pi/pi_inst) in the KL "
        "estimators, [-c, c]; null: none (verl uses 20)",
    )
    adaptive_kl: bool = False
    kl_target: float = Field(default=6.0, gt=0)
    kl_horizon: int = Field(default=10000, ge=1)
    ptx_coef: float = Field(default=0.0, ge=0, description="lambda_ptx: weight of the Eq. 1 pretraining loss")
    ptx_batch_size: int = Field(default=4, ge=1)
    # advantage / value choices
    gamma: float = Field(default=1.0, ge=0, le=1)
    gae_lambda: float = Field(default=0.95, ge=0, le=1)
    whiten_advantages: bool = True
    clip_range: float = Field(default=0.2, gt=0)
    dual_clip: float | None = Field(default=None, gt=1)
    value_clip: float | None = Field(default=0.2, gt=0)
    value_coef: float = Field(default=0.5, ge=0)
    loss_agg: Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"] = Field(
        default="token_mean",
        description="per-token policy/value losses -> one loss per minibatch (verl's names): token_mean over all "
        "response tokens of the minibatch (all ranks), seq_mean_token_mean (each sequence weighs the same), "
        "seq_mean_token_sum (a sequence weighs by its length); micro batches and ranks add up to the same gradient",
    )
    reward_clip: float = Field(default=5.0, gt=0)
    normalize_reward: bool = True
    # roles (docs/DESIGN.md §5)
    colocate: bool = True
    policy: RoleConfig = RoleConfig()
    critic: RoleConfig = RoleConfig()
    reference: RoleConfig = RoleConfig(num_cpus=0.5)
    reward: RewardRoleConfig = RewardRoleConfig(num_cpus=0.5)
    rollout: RolloutRoleConfig = RolloutRoleConfig(num_cpus=0.5)
    sync_timeout_s: float = Field(default=120.0, gt=0, description="weight sync, and the trainers' process groups "
                                  "(DeepSpeed's collectives fail after it)")
    sync_bucket_mb: float = Field(default=64.0, gt=0, description="weight-sync bucket size")
    sync_transport: Literal["auto", "object_store", "collective", "cuda_ipc"] = Field(
        default="auto",
        description="policy -> rollout engines: auto = object_store on CPU; on GPU cuda_ipc when colocated, "
        "else collective (an NCCL broadcast group; gloo on CPU)",
    )
    actor_timeout_s: float = Field(default=600.0, gt=0, description="longest wait for one role's call")
    ckpt_every: int = Field(default=10, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    log_every: int = Field(default=1, ge=1)
    profile_phases: bool = Field(
        default=False, description="after each phase, read every role actor's own compute time (one extra call "
        "per actor): metrics compute_<phase> (the slowest actor's), busy_<phase> (every actor's, summed) and "
        "driver_experience (the driver's own math: collate, GAE); the rest of a phase is orchestration")
    prompts: DataSpec | None = Field(default=None, description="prompt rows in any layout batray reads; null: data.prompts")
    prompt_format: Literal["chat", "raw"] = Field(default="chat", description="chat: BatGPT's template, one user turn")
    max_prompt_tokens: int = Field(default=256, ge=2, description="longer prompts are skipped (counted)")
    ptx_data: DataSpec | None = Field(default=None, description="pretraining corpus for lambda_ptx; null: the run's corpus")
    ptx_seq_len: int = Field(default=64, ge=8)
    ptx_bidirectional: bool = Field(default=True, description="Eq. 1: l2r and r2l samples; false: l2r only")
    policy_init: InputPath | None = Field(default=None, description="null: the latest model stage before ppo (sft)")
    reward_model: InputPath | None = Field(default=None, description="null: the reward stage's output (unused with reward.kind rule)")
    critic_init: InputPath | None = Field(
        default=None, description="null: the reward model (InstructGPT), or policy_init with a fresh head for a rule reward"
    )
    lora: LoraConfig | None = Field(
        default=None, description="LoRA adapters on the policy and the critic (its value head trained in full); the "
        "reference is then the policy with its adapters disabled (no reference actors, no second copy)")
    seed: int = 0

    @model_validator(mode="after")
    def _offload_needs_zero(self) -> "PpoConfig":
        if self.offload_between_phases and self.deepspeed.zero_stage == 0:
            raise ValueError("offload_between_phases needs deepspeed.zero_stage 1, 2 or 3 (ZeRO owns the states it moves)")
        return self

    @model_validator(mode="after")
    def _batches_divide(self) -> "PpoConfig":
        if self.rollout_batch_size % self.num_minibatches:
            raise ValueError(
                f"rollout_batch_size ({self.rollout_batch_size}) must be divisible by num_minibatches ({self.num_minibatches})"
            )
        for role in ("policy", "critic"):
            ranks = getattr(self, role).num_actors
            if self.rollout_batch_size % (ranks * self.num_minibatches):
                raise ValueError(
                    f"rollout_batch_size ({self.rollout_batch_size}) must be divisible by {role}.num_actors x "
                    f"num_minibatches ({ranks} x {self.num_minibatches})"
                )
        return self
