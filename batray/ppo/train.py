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
from batray.objectives.lm import bidirectional_lm_loss, packed_lm_logits
from batray.objectives.ppo import (
    entropy_from_logits,
    eq4_policy_loss,
    loss_agg_count,
    masked_sum,
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


def value_head(model) -> torch.nn.Module:
    """The scalar head (`.score`) of an `AutoModelForSequenceClassification` with one label, or of the one a
    trainer wraps.

    The critic reuses the reward model's architecture (and weights, as InstructGPT does), but reads
    the head at every response position instead of only the last token.
    """
    inner = getattr(model, "module", model)  # a trainer holds the HF model in .module
    head = getattr(inner, "score", None)
    if head is None:
        raise TypeError(f"{type(inner).__name__}: expected a sequence-classification model with `.score`")
    return head


def token_values(model, batch: Batch) -> torch.Tensor:
    """V(s_t) for each response position t: the value head on the hidden state that predicts token t. [B, T].

    `model` is the critic or its trainer. The call runs the model's own forward (through DeepSpeed's when a
    trainer is given: ZeRO-3 counts accumulated micro batches there, and a backbone called on its own would
    overwrite the gradient of the earlier micro batches) and reads the head's output at every position
    from a forward hook, before the model pools it to the last token.
    """
    per_position = []
    handle = value_head(model).register_forward_hook(lambda _m, _inputs, out: per_position.append(out))
    try:
        model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            use_cache=False,
        )
    finally:
        handle.remove()
    return per_position[0][:, response_slice(batch)].squeeze(-1).float() * batch["response_mask"]


@torch.no_grad()
def batch_values(model, batch: Batch, micro_batch_size: int) -> torch.Tensor:
    return torch.cat([token_values(model, m) for m in micro_batches(batch, micro_batch_size)])


def ptx_logits(model, blocks: Batch) -> torch.Tensor:
    """Logits of packed pretraining blocks, each segment attending only to itself (the mask pretraining uses)."""
    return packed_lm_logits(model, blocks["input_ids"], blocks["position_ids"])


def ptx_loss(model, blocks: Batch) -> torch.Tensor:
    """Eq. 4's pretraining term as a loss: Eq. 1's bidirectional NLL per target token on packed blocks
    (`batray.objectives.lm.bidirectional_lm_loss`, the same loss and attention mask pretraining uses)."""
    loss, _ = bidirectional_lm_loss(ptx_logits(model, blocks), blocks["labels"], blocks["directions"])
    return loss


class _MinibatchStats:
    """What one minibatch logs: losses as summed, other values as token means over the minibatch."""

    def __init__(self):
        self.sums: dict[str, float] = defaultdict(float)
        self.tokens = 0.0
        self.values: dict[str, float] = {}

    def add_token_means(self, mask: torch.Tensor, **means: torch.Tensor) -> None:
        n = float(mask.sum())
        self.tokens += n
        for k, v in means.items():
            self.sums[k] += float(v) * n

    def row(self) -> dict[str, float]:
        return {**{k: v / max(self.tokens, 1.0) for k, v in self.sums.items()}, **self.values}


def _mean_stats(rows: list[dict[str, float]]) -> dict[str, float]:
    sums: dict[str, float] = defaultdict(float)
    for row in rows:
        for k, v in row.items():
            sums[k] += v
    return {k: v / len(rows) for k, v in sums.items()}


# ---- the update loops -------------------------------------------------------------------------


def minibatch_normalizer(trainer, micros: list[Batch], loss_agg: str) -> float:
    """The `agg_loss` denominator of one minibatch over all of the role's ranks: the count of response
    tokens (token_mean) or non-empty sequences (seq_mean_*) of every micro batch, summed over the ranks by
    an all-reduce. Each micro batch's loss divided by it, times the number of ranks (DeepSpeed averages the
    ranks' gradients), gives the gradient of the whole global minibatch as one batch."""
    local = sum(float(loss_agg_count(m["response_mask"], loss_agg)) for m in micros)
    return trainer.all_reduce_sum(local)


def policy_update(trainer, experience: Batch, ptx_batches: list[Batch] | None, cfg: PpoConfig,
                  seed: int) -> dict[str, float]:
    """`ppo_epochs` passes of `num_minibatches` optimizer steps over this rank's shard.

    Each step minimizes Eq. 4 as `eq4_policy_loss`: the clipped surrogate on the shaped advantages,
    aggregated over the whole minibatch by `ppo.loss_agg` (`minibatch_normalizer`: the same gradient for
    any split into micro batches and ranks), plus lambda_ptx times Eq. 1's loss on `ptx_batches[k]` (one
    batch of pretraining blocks per step k; a token mean per rank, the ranks' gradients averaged).
    `seed` fixes the minibatch shuffle (the same on every rank's shard, so resumes are exact).
    Logged: `policy_loss` the minibatch's loss, `policy_grad_norm` its gradient's norm before clipping,
    entropy / clip_frac / approx_kl token means.
    """
    trainer.train()
    g = torch.Generator().manual_seed(seed)
    rows = []
    k = 0
    for _ in range(cfg.ppo_epochs):
        for mb in minibatches(experience, cfg.num_minibatches, g):
            micros = [trim_padding(m) for m in micro_batches(mb, cfg.micro_batch_size)]
            count = minibatch_normalizer(trainer, micros, cfg.loss_agg)
            stats = _MinibatchStats()
            stats.values["policy_loss"] = 0.0
            for i, micro in enumerate(micros):
                mask = micro["response_mask"]
                logits = response_logits(trainer, micro)
                logp = token_logprobs(logits, micro["response_ids"])
                pg_loss, pg_stats = policy_loss(
                    logp, micro["old_logprobs"], micro["advantages"], mask, cfg.clip_range, cfg.dual_clip,
                    loss_agg=cfg.loss_agg, count=count, log_ratio_clamp=cfg.log_ratio_clamp,
                )
                loss = pg_loss * trainer.world_size
                if i == 0 and ptx_batches is not None and cfg.ptx_coef > 0:
                    lm_loss = ptx_loss(trainer, ptx_batches[k])
                    loss = eq4_policy_loss(loss, lm_loss, cfg.ptx_coef)
                    stats.values["ptx_loss"] = lm_loss.item()
                trainer.backward(loss)
                with torch.no_grad():
                    entropy = masked_sum(entropy_from_logits(logits.float()), mask) / mask.sum().clamp_min(1.0)
                stats.add_token_means(mask, entropy=entropy, clip_frac=pg_stats["clip_frac"],
                                      approx_kl=pg_stats["approx_kl"])
                stats.values["policy_loss"] += pg_loss.item() * trainer.world_size
            stats.values["policy_grad_norm"] = trainer.step()
            rows.append(stats.row())
            k += 1
    return _mean_stats(rows)


def critic_update(trainer, experience: Batch, cfg: PpoConfig, seed: int) -> dict[str, float]:
    """The critic's clipped value regression towards the GAE returns, same schedule and aggregation as the policy."""
    trainer.train()
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(cfg.ppo_epochs):
        for mb in minibatches(experience, cfg.num_minibatches, g):
            micros = [trim_padding(m) for m in micro_batches(mb, cfg.micro_batch_size)]
            count = minibatch_normalizer(trainer, micros, cfg.loss_agg)
            stats = _MinibatchStats()
            stats.values["value_loss"] = 0.0
            for micro in micros:
                mask = micro["response_mask"]
                values = token_values(trainer, micro)
                loss, v_stats = value_loss(values, micro["old_values"], micro["returns"], mask, cfg.value_clip,
                                           loss_agg=cfg.loss_agg, count=count)
                trainer.backward(cfg.value_coef * loss * trainer.world_size)
                stats.values["value_loss"] += loss.item() * trainer.world_size
                stats.add_token_means(mask, value_clip_frac=v_stats["value_clip_frac"])
            stats.values["critic_grad_norm"] = trainer.step()
            rows.append(stats.row())
    return _mean_stats(rows)


def num_update_steps(cfg: PpoConfig) -> int:
    """Optimizer steps per PPO step (each takes one batch of ptx blocks)."""
    return cfg.ppo_epochs * cfg.num_minibatches


def quiet_model_loading() -> None:
    """No per-actor "Loading weights" / "Writing model shards" progress bars in the driver's log."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
