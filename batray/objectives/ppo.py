"""PPO math for Eq. 4 of the BatGPT paper, as small pure torch functions (the shape of verl's core_algos).

Eq. 4 maximizes, over the policy pi_phi,

    E_(x,y)~pi_phi [ r_theta(x, y) - lambda_KL * log(pi_phi(y|x) / pi_inst(y|x)) ]
        + lambda_ptx * E_x~D_pretrain [ log pi_phi(x) ]

where r_theta is the reward model (Eq. 3), pi_inst the frozen SFT policy (the reference) and the last
term the bidirectional language-model objective of Eq. 1 on pretraining data. The RL part is optimized
with PPO (clipped surrogate, GAE, clipped value loss), as InstructGPT and its open peers do.

Shapes: `[B, T]` tensors are per response token (B sequences, T response positions, right-padded);
`mask` is 1.0 on real response tokens and 0.0 on padding. Estimators are chosen by name from
registries (`KL_ESTIMATORS`, `KL_CONTROLLERS`) so configs name them and tests check each.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

# ---- masked statistics ------------------------------------------------------------------------


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    return (x * mask).sum() if dim is None else (x * mask).sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over positions where mask is 1 (over all of them, or along `dim`)."""
    if dim is None:
        return masked_sum(x, mask) / mask.sum().clamp_min(1e-8)
    return masked_sum(x, mask, dim) / mask.sum(dim).clamp_min(1e-8)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance over the masked positions (Bessel-corrected by default, like verl/TRL)."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1).clamp_min(1.0)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """Advantage whitening: (x - mean) / std over masked positions; `shift_mean=False` adds the mean back."""
    mean, var = masked_mean(x, mask), masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask


# ---- the KL term of Eq. 4 ---------------------------------------------------------------------


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log pi(y_t) - log pi_inst(y_t): Eq. 4's log-ratio itself (unbiased, can be negative)."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = 1/2 (log pi - log pi_inst)^2 (Schulman's k2: biased, low variance, non-negative)."""
    return 0.5 * (logp - ref_logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = pi_inst / pi (Schulman's k3: unbiased, non-negative)."""
    log_ratio = ref_logp - logp
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_inst) for Eq. 4's penalty, by estimator name."""
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown KL estimator {estimator!r}; one of {sorted(KL_ESTIMATORS)}") from None
    return fn(logp, ref_logp)


class FixedKLController:
    """lambda_KL of Eq. 4 held constant."""

    def __init__(self, kl_coef: float, target: float | None = None, horizon: int | None = None):
        self.value = float(kl_coef)  # target and horizon: unused (one constructor signature for the registry)

    def update(self, current_kl: float, n_steps: int) -> float:
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """lambda_KL adapted towards a target KL (Ziegler et al. 2019, §2.2; as in TRL/verl/OpenRLHF).

    e = clip(KL / target - 1, -0.2, 0.2);  lambda <- lambda * (1 + e * n_steps / horizon),
    where KL is the mean per-sequence KL of the last batch and n_steps its number of sequences.
    """

    def __init__(self, kl_coef: float, target: float = 6.0, horizon: int = 10000):
        self.value, self.target, self.horizon = float(kl_coef), float(target), int(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def state_dict(self) -> dict:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, state: dict) -> None:
        self.value = float(state["value"])


KL_CONTROLLERS: dict[str, type] = {"fixed": FixedKLController, "adaptive": AdaptiveKLController}


def make_kl_controller(kind: str, kl_coef: float, target: float = 6.0, horizon: int = 10000):
    """lambda_KL's controller by name (`KL_CONTROLLERS`)."""
    try:
        cls = KL_CONTROLLERS[kind]
    except KeyError:
        raise ValueError(f"unknown KL controller {kind!r}; one of {sorted(KL_CONTROLLERS)}") from None
    return cls(kl_coef, target, horizon)


# ---- rewards ----------------------------------------------------------------------------------


def normalize_scores(scores: torch.Tensor, mean: float, std: float, clip: float | None) -> torch.Tensor:
    """r_theta(x, y) standardized with the reward model's saved statistics, then clipped to [-clip, clip]."""
    out = (scores - mean) / max(std, 1e-8)
    return out.clamp(-clip, clip) if clip is not None else out


def shaped_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """Eq. 4's per-token reward: -lambda_KL * KL_t everywhere, plus r_theta(x, y) on the last response token.

    scores: [B] (already normalized/clipped); kl: [B, T] per-token estimate; mask: [B, T].
    """
    rewards = -kl_coef * kl * mask
    last = last_token_index(mask)
    rewards[torch.arange(len(scores)), last] += scores.to(rewards.dtype)
    return rewards


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a right-padded mask (0 for an empty row)."""
    return (mask.sum(-1).long() - 1).clamp_min(0)


# ---- advantages -------------------------------------------------------------------------------


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016) over response tokens.

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1};  returns R_t = A_t + V_t.
    V after the last real token is 0 (the episode ends there). Returns (advantages, returns), both [B, T],
    zero on padding.
    """
    values = values * mask
    rewards = rewards * mask
    T = rewards.shape[-1]
    advantages = torch.zeros_like(rewards)
    last_gae = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_value = values[:, t + 1] if t + 1 < T else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        last_gae = (delta + gamma * lam * last_gae) * mask[:, t]
        advantages[:, t] = last_gae
    returns = (advantages + values) * mask
    return advantages, returns


# ---- losses -----------------------------------------------------------------------------------


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    dual_clip: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, Eq. 7) as a loss, token-mean over the mask.

    L = max(-A * r, -A * clip(r, 1 - eps, 1 + eps)) with r = pi / pi_old. With `dual_clip` c > 1
    (Ye et al. 2020), tokens with A < 0 are additionally bounded by -A * c. Returns (loss, stats)
    with the clip fraction and the approximate KL(pi_old || pi) (k3).
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    losses = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        losses = torch.where(advantages < 0, torch.minimum(losses, -advantages * dual_clip), losses)
    loss = masked_mean(losses, mask)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(approx_kl(logp, old_logp), mask),
        }
    return loss, stats


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi_old || pi) between the rollout policy and the updated one."""
    return kl_k3(logp, old_logp)


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float | None
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Critic loss 1/2 (V - R)^2, token-mean; with `clip`, PPO's pessimistic clipped variant:
    1/2 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)."""
    err = (values - returns) ** 2
    if clip is None:
        return 0.5 * masked_mean(err, mask), {"value_clip_frac": torch.zeros(())}
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err, err_clipped), mask)
    with torch.no_grad():
        frac = masked_mean((err_clipped > err).float(), mask)
    return loss, {"value_clip_frac": frac}


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy of softmax(logits): logsumexp(z) - sum softmax(z) * z. [..., V] -> [...]."""
    p = F.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (p * logits).sum(-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(R - V) / Var(R) over masked tokens: 1 is a perfect critic, 0 no better than a constant."""
    var_returns = masked_var(returns, mask)
    return 1.0 - masked_var(returns - values, mask) / var_returns.clamp_min(1e-8)


def eq4_policy_loss(ppo_loss: torch.Tensor, ptx_loss: torch.Tensor | None, ptx_coef: float) -> torch.Tensor:
    """Eq. 4 as one loss to minimize: the PPO surrogate of the KL-shaped reward term, plus lambda_ptx
    times the Eq. 1 pretraining negative log-likelihood (the paper's lambda_ptx E[log pi(x)] term)."""
    if ptx_loss is None or ptx_coef == 0:
        return ppo_loss
    return ppo_loss + ptx_coef * ptx_loss


# ---- log-probabilities of sampled tokens ------------------------------------------------------


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[tokens]: [B, T, V], [B, T] -> [B, T], computed in float32."""
    logits = logits.float()
    return torch.gather(logits, -1, tokens.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
