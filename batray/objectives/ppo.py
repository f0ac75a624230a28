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

import numpy as np
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


def clamp_log_ratio(log_ratio: torch.Tensor, bound: float | None) -> torch.Tensor:
    """A log-ratio of two policies' token probabilities clamped to [-bound, bound] (None: as is).

    verl bounds it at 20 so that exp() of a token the new policy all but rules out stays finite.
    """
    return log_ratio if bound is None else log_ratio.clamp(-bound, bound)


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor, log_ratio_clamp: float | None = None) -> torch.Tensor:
    """k1 = log pi(y_t) - log pi_inst(y_t): Eq. 4's log-ratio itself (unbiased, can be negative)."""
    return clamp_log_ratio(logp - ref_logp, log_ratio_clamp)


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor, log_ratio_clamp: float | None = None) -> torch.Tensor:
    """k2 = 1/2 (log pi - log pi_inst)^2 (Schulman's k2: biased, low variance, non-negative)."""
    return 0.5 * clamp_log_ratio(logp - ref_logp, log_ratio_clamp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor, log_ratio_clamp: float | None = None) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = pi_inst / pi (Schulman's k3): an unbiased, non-negative estimate of
    KL(pi || pi_inst) for tokens sampled from pi, the first argument's policy."""
    log_ratio = clamp_log_ratio(ref_logp - logp, log_ratio_clamp)
    return torch.expm1(log_ratio) - log_ratio


KL_ESTIMATORS: dict[str, Callable[..., torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "k1", *,
               log_ratio_clamp: float | None = None, kl_clamp: float | None = None) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_inst) for Eq. 4's penalty, by estimator name.

    Optional bounds (off by default; verl's values are 20 and 10): `log_ratio_clamp` on log(pi / pi_inst)
    inside the estimator, `kl_clamp` on the per-token estimate itself, so one token that the policy has
    moved far from pi_inst cannot dominate the shaped reward.
    """
    try:
        fn = KL_ESTIMATORS[estimator]
    except KeyError:
        raise ValueError(f"unknown KL estimator {estimator!r}; one of {sorted(KL_ESTIMATORS)}") from None
    kl = fn(logp, ref_logp, log_ratio_clamp)
    return kl if kl_clamp is None else kl.clamp(-kl_clamp, kl_clamp)


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
    # The recursion runs over numpy rows: per time step it is a few [B]-sized operations, where torch's
    # per-call overhead (~5 us each) made it the largest part of the driver's `make_experience`.
    m = mask.detach().float().cpu().numpy()
    v = values.detach().float().cpu().numpy() * m
    r = rewards.detach().float().cpu().numpy() * m
    T = r.shape[-1]
    advantages = np.zeros_like(r)
    last_gae = np.zeros_like(r[:, 0])
    for t in reversed(range(T)):
        next_value = v[:, t + 1] if t + 1 < T else 0.0
        delta = r[:, t] + gamma * next_value - v[:, t]
        last_gae = (delta + gamma * lam * last_gae) * m[:, t]
        advantages[:, t] = last_gae
    returns = (advantages + v) * m
    like = dict(dtype=rewards.dtype, device=rewards.device)
    return torch.from_numpy(advantages).to(**like), torch.from_numpy(returns).to(**like)


# ---- loss aggregation -------------------------------------------------------------------------

# How a [B, T] matrix of per-token losses becomes the scalar that is minimized (verl's `loss_agg_mode`):
#   token_mean           sum_i sum_t l_it / sum_i |y_i|       every response token weighs the same
#   seq_mean_token_mean  (1/B) sum_i (1/|y_i|) sum_t l_it     every sequence weighs the same
#   seq_mean_token_sum   (1/B) sum_i sum_t l_it               a sequence weighs by its length
# (B counts the sequences with at least one response token.)
LOSS_AGG_MODES = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")


def loss_agg_count(mask: torch.Tensor, mode: str) -> torch.Tensor:
    """The denominator of `mode` for this batch (0-d): its response tokens, or its non-empty sequences.

    Counts add up over micro batches (and ranks), so the count of a whole minibatch is their sum."""
    if mode == "token_mean":
        return mask.sum()
    if mode in ("seq_mean_token_mean", "seq_mean_token_sum"):
        return (mask.sum(-1) > 0).sum().to(mask.dtype)
    raise ValueError(f"unknown loss aggregation {mode!r}; one of {list(LOSS_AGG_MODES)}")


def agg_loss(losses: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean",
             count: torch.Tensor | float | None = None) -> torch.Tensor:
    """Aggregate per-token losses [B, T] into a scalar by `mode` (see LOSS_AGG_MODES).

    `count` is the denominator: by default this batch's own (`loss_agg_count`); with gradient
    accumulation pass the whole minibatch's, so that the micro batches' losses add up to the minibatch's
    loss and their gradients to the gradient of one big batch.
    """
    if count is None:
        count = loss_agg_count(mask, mode)
    elif mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss aggregation {mode!r}; one of {list(LOSS_AGG_MODES)}")
    if mode == "seq_mean_token_mean":
        total = (masked_sum(losses, mask, -1) / mask.sum(-1).clamp_min(1.0)).sum()
    else:  # token_mean and seq_mean_token_sum share the numerator; only the denominator differs
        total = masked_sum(losses, mask)
    if torch.is_tensor(count):
        return total / count.clamp_min(1e-8)
    return total / max(float(count), 1e-8)


# ---- losses -----------------------------------------------------------------------------------


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    dual_clip: float | None = None,
    *,
    loss_agg: str = "token_mean",
    count: torch.Tensor | float | None = None,
    log_ratio_clamp: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, Eq. 7) for Eq. 4's reward term, as a loss.

    L = max(-A * r, -A * clip(r, 1 - eps, 1 + eps)) with r = pi / pi_old, aggregated by `agg_loss`
    (`loss_agg`, `count`). With `dual_clip` c > 1 (Ye et al. 2020), tokens with A < 0 are additionally
    bounded by -A * c. `log_ratio_clamp` bounds log r first (off by default; verl uses 20). Returns
    (loss, stats) with the per-token clip indicator and approximate KL(pi_old || pi) as token means.
    """
    log_ratio = clamp_log_ratio(logp - old_logp, log_ratio_clamp)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    losses = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        losses = torch.where(advantages < 0, torch.minimum(losses, -advantages * dual_clip), losses)
    loss = agg_loss(losses, mask, loss_agg, count)
    with torch.no_grad():
        stats = {
            "clip_frac": masked_mean((clipped > unclipped).float(), mask),
            "approx_kl": masked_mean(approx_kl(logp, old_logp, log_ratio_clamp), mask),
        }
    return loss, stats


def approx_kl(logp: torch.Tensor, old_logp: torch.Tensor, log_ratio_clamp: float | None = None) -> torch.Tensor:
    """Per-token k3 estimate of KL(pi_old || pi) for tokens sampled from pi_old (the rollout policy):
    (r - 1) - log r with r = pi / pi_old, whose expectation under pi_old is exactly that KL."""
    return kl_k3(old_logp, logp, log_ratio_clamp)


def value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, clip: float | None,
    *, loss_agg: str = "token_mean", count: torch.Tensor | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Critic loss 1/2 (V - R)^2, aggregated by `agg_loss`; with `clip`, PPO's pessimistic clipped variant:
    1/2 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)."""
    err = (values - returns) ** 2
    if clip is None:
        return 0.5 * agg_loss(err, mask, loss_agg, count), {"value_clip_frac": torch.zeros(())}
    clipped_values = old_values + (values - old_values).clamp(-clip, clip)
    err_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * agg_loss(torch.maximum(err, err_clipped), mask, loss_agg, count)
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
