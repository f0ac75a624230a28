"""The model side of PPO: forward passes over rollout batches and the policy/critic update loops.

The update loops take a trainer (`batray.ppo.trainer`): a callable model for forwards, `module` for the
wrapped model, `backward(loss)` per micro batch and `step()` per minibatch. On the policy and critic
actors that is a `DeepSpeedTrainer` (ZeRO 0-3 across the role's ranks: DeepSpeed reduces or shards the
gradients); benchmarks and unit tests use a `LocalTrainer` (one process, plain AdamW).
"""

from __future__ import annotations

from collections import defaultdict

import torch

from batray.config.rl import PpoConfig
from batray.objectives.lm import bidirectional_lm_loss
from batray.objectives.ppo import (
    entropy_from_logits,
    eq4_policy_loss,
    masked_mean,
    policy_loss,
    token_logprobs,
    value_loss,
)
from batray.ppo.batch import Batch, micro_batches, minibatches, response_slice, trim_padding

# ---- forward passes ---------------------------------------------------------------------------


def response_logits(model, batch: Batch) -> torch.Tensor:
    """Logits that predict the response tokens: [B, T, V]."""
    out = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    )
    return out.logits[:, response_slice(batch)]


@torch.no_grad()
def response_logprobs(model, batch: Batch, micro_batch_size: int) -> torch.Tensor:
    """log pi(response token) for every response position, [B, T] (0 on padding)."""
    out = torch.zeros_like(batch["response_mask"])
    start = 0
    for micro in micro_batches(batch, micro_batch_size):
        n = micro["input_ids"].shape[0]
        logits = response_logits(model, micro)
        out[start : start + n] = token_logprobs(logits, micro["response_ids"]) * micro["response_mask"]
        start += n
    return out


def value_model_parts(model):
    """(backbone, scalar head) of an `AutoModelForSequenceClassification` with one label.

    The critic reuses the reward model's architecture (and weights, as InstructGPT does), but reads
    the head at every response position instead of only the last token.
    """
    backbone = getattr(model, model.base_model_prefix, None)
    head = getattr(model, "score", None)
    if backbone is None or head is None:
        raise TypeError(f"{type(model).__name__}: expected a sequence-classification model with `.score`")
    return backbone, head


def token_values(model, batch: Batch) -> torch.Tensor:
    """V(s_t) for each response position t: the value head on the hidden state that predicts token t. [B, T]."""
    backbone, head = value_model_parts(model)
    hidden = backbone(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        use_cache=False,
    ).last_hidden_state[:, response_slice(batch)]
    return head(hidden).squeeze(-1).float() * batch["response_mask"]


@torch.no_grad()
def batch_values(model, batch: Batch, micro_batch_size: int) -> torch.Tensor:
    return torch.cat([token_values(model, m) for m in micro_batches(batch, micro_batch_size)])


def ptx_loss(model, blocks: Batch) -> torch.Tensor:
    """Eq. 4's pretraining term as a loss: Eq. 1's bidirectional NLL per target token on packed blocks
    (`batray.objectives.lm.bidirectional_lm_loss`, the same loss pretraining optimizes)."""
    logits = model(
        input_ids=blocks["input_ids"],
        attention_mask=blocks["attention_mask"],
        position_ids=blocks["position_ids"],
        use_cache=False,
    ).logits
    loss, _ = bidirectional_lm_loss(logits, blocks["labels"], blocks["directions"])
    return loss


def _mean_stats(rows: list[dict[str, float]]) -> dict[str, float]:
    sums: dict[str, float] = defaultdict(float)
    for row in rows:
        for k, v in row.items():
            sums[k] += v
    return {k: v / len(rows) for k, v in sums.items()}


# ---- the update loops -------------------------------------------------------------------------


def policy_update(trainer, experience: Batch, ptx_batches: list[Batch] | None, cfg: PpoConfig,
                  seed: int) -> dict[str, float]:
    """`ppo_epochs` passes of `num_minibatches` optimizer steps over this rank's shard.

    Each step minimizes Eq. 4 as `eq4_policy_loss`: the clipped surrogate on the shaped advantages plus
    lambda_ptx times Eq. 1's loss on `ptx_batches[k]` (one batch of pretraining blocks per step k).
    `seed` fixes the minibatch shuffle (the same on every rank's shard, so resumes are exact).
    """
    trainer.train()
    g = torch.Generator().manual_seed(seed)
    rows = []
    k = 0
    for _ in range(cfg.ppo_epochs):
        for mb in minibatches(experience, cfg.num_minibatches, g):
            micros = list(micro_batches(mb, cfg.micro_batch_size))
            stats: dict[str, float] = defaultdict(float)
            for i, micro in enumerate(micros):
                micro = trim_padding(micro)
                mask = micro["response_mask"]
                logits = response_logits(trainer, micro)
                logp = token_logprobs(logits, micro["response_ids"])
                pg_loss, pg_stats = policy_loss(
                    logp, micro["old_logprobs"], micro["advantages"], mask, cfg.clip_range, cfg.dual_clip
                )
                loss = pg_loss / len(micros)
                if i == 0 and ptx_batches is not None and cfg.ptx_coef > 0:
                    lm_loss = ptx_loss(trainer, ptx_batches[k])
                    loss = eq4_policy_loss(loss, lm_loss, cfg.ptx_coef)
                    stats["ptx_loss"] = lm_loss.item()
                trainer.backward(loss)
                with torch.no_grad():
                    stats["entropy"] += float(masked_mean(entropy_from_logits(logits.float()), mask)) / len(micros)
                stats["policy_loss"] += pg_loss.item() / len(micros)
                stats["clip_frac"] += float(pg_stats["clip_frac"]) / len(micros)
                stats["approx_kl"] += float(pg_stats["approx_kl"]) / len(micros)
            stats["policy_grad_norm"] = trainer.step()
            rows.append(dict(stats))
            k += 1
    return _mean_stats(rows)


def critic_update(trainer, experience: Batch, cfg: PpoConfig, seed: int) -> dict[str, float]:
    """The critic's clipped value regression towards the GAE returns, same schedule as the policy."""
    trainer.train()
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(cfg.ppo_epochs):
        for mb in minibatches(experience, cfg.num_minibatches, g):
            micros = list(micro_batches(mb, cfg.micro_batch_size))
            stats: dict[str, float] = defaultdict(float)
            for micro in micros:
                micro = trim_padding(micro)
                values = token_values(trainer.module, micro)
                loss, v_stats = value_loss(
                    values, micro["old_values"], micro["returns"], micro["response_mask"], cfg.value_clip
                )
                trainer.backward(cfg.value_coef * loss / len(micros))
                stats["value_loss"] += loss.item() / len(micros)
                stats["value_clip_frac"] += float(v_stats["value_clip_frac"]) / len(micros)
            stats["critic_grad_norm"] = trainer.step()
            rows.append(dict(stats))
    return _mean_stats(rows)


def num_update_steps(cfg: PpoConfig) -> int:
    """Optimizer steps per PPO step (each takes one batch of ptx blocks)."""
    return cfg.ppo_epochs * cfg.num_minibatches


def quiet_model_loading() -> None:
    """No per-actor "Loading weights" / "Writing model shards" progress bars in the driver's log."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
