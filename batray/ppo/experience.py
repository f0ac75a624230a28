"""From a scored rollout batch to PPO experience: Eq. 4's shaped rewards, GAE, whitening, and stats.

Runs once per step on the whole batch (not per rank), so advantage whitening uses global statistics.
"""

from __future__ import annotations

import torch

from batray.config.rl import PpoConfig
from batray.objectives.ppo import (
    explained_variance,
    gae_advantages,
    kl_penalty,
    masked_mean,
    masked_whiten,
    normalize_scores,
    shaped_rewards,
)
from batray.ppo.batch import Batch


def make_experience(batch: Batch, *, old_logprobs: torch.Tensor, ref_logprobs: torch.Tensor, values: torch.Tensor,
                    raw_scores: torch.Tensor, reward_mean: float, reward_std: float, kl_coef: float,
                    cfg: PpoConfig) -> tuple[Batch, dict[str, float]]:
    """Add `old_logprobs`, `old_values`, `advantages`, `returns` to `batch`; return it with step stats."""
    mask = batch["response_mask"]
    if cfg.normalize_reward:
        scores = normalize_scores(raw_scores.float(), reward_mean, reward_std, cfg.reward_clip)
    else:
        scores = raw_scores.float().clamp(-cfg.reward_clip, cfg.reward_clip)
    kl = kl_penalty(old_logprobs, ref_logprobs, cfg.kl_estimator, log_ratio_clamp=cfg.log_ratio_clamp,
                    kl_clamp=cfg.kl_clamp) * mask
    rewards = shaped_rewards(scores, kl, mask, kl_coef)
    advantages, returns = gae_advantages(rewards, values, mask, cfg.gamma, cfg.gae_lambda)
    if cfg.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    seq_kl = kl.sum(-1)  # per-sequence KL estimate, what the adaptive controller tracks
    lengths = mask.sum(-1)
    rollout_gap = (batch["rollout_logprobs"] - old_logprobs).abs() * mask
    stats = {
        "reward_raw": float(raw_scores.float().mean()),
        "reward": float(scores.mean()),
        "kl": float(seq_kl.mean()),
        "kl_per_token": float(masked_mean(kl, mask)),
        "kl_coef": float(kl_coef),
        "return": float(masked_mean(returns, mask)),
        "value": float(masked_mean(values, mask)),
        "explained_variance": float(explained_variance(values, returns, mask)),
        "response_length": float(lengths.mean()),
        # Rollout engine vs trainer log-probabilities of the same tokens (engine drift, stale weights).
        "rollout_logprob_diff_mean": float(masked_mean(rollout_gap, mask)),
        "rollout_logprob_diff_max": float(rollout_gap.max()),
    }
    out = dict(batch)
    out.update(old_logprobs=old_logprobs, old_values=values, advantages=advantages, returns=returns)
    return out, stats
