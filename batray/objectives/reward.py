"""Reward-model objectives (§3.3): the paper's hinge loss (Eq. 3) and two ways to teach ties.

Notation (docs/DESIGN.md §3): a preference triple is (y, y', d) with y = response_a, y' = response_b and
d in {-1, 0, 1}: -1 means a is preferred, +1 means b is preferred, 0 means the two are equivalent.
`r_a = r(x, y)` and `r_b = r(x, y')` are the scalar rewards, `delta = r_b - r_a`.

- `hinge_loss` is Eq. 3 exactly: max(0, margin - d * (r(y') - r(y))), margin 1 in the paper. For a tie
  (d = 0) the term is the constant `margin`, carrying no gradient: ties teach Eq. 3 nothing.
- `band_tie_loss`: ties pull the two rewards within a band, max(0, |r(y') - r(y)| - tau), tau < margin.
- `rao_kupper_loss`: Bradley-Terry with ties (Rao & Kupper, 1967) with a learned threshold theta > 0:
  P(b > a) = sigmoid(delta - theta), P(a > b) = sigmoid(-delta - theta), P(tie) = the rest.

`reward_loss` picks the tie treatment by name from `TIE_LOSSES` and returns the loss that is optimized
plus the values a stage logs (tie share, the Eq. 3 loss with and without its constant tie term).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F


def hinge_loss(r_a: torch.Tensor, r_b: torch.Tensor, d: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """Eq. 3 per triple: max(0, margin - d * (r(y') - r(y))), with y = a and y' = b. Shape of `d`.

    With d = 0 the value is `margin` and its gradient is zero (d multiplies the rewards away).
    """
    d = d.to(r_a.dtype)
    return torch.clamp(margin - d * (r_b - r_a), min=0.0)


def band_tie_loss(r_a: torch.Tensor, r_b: torch.Tensor, tau: float) -> torch.Tensor:
    """Per tie: max(0, |r(y') - r(y)| - tau); zero while the two rewards are within tau of each other."""
    return torch.clamp((r_b - r_a).abs() - tau, min=0.0)


def rao_kupper_log_probs(r_a: torch.Tensor, r_b: torch.Tensor, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log P(a > b), log P(tie), log P(b > a)) under Rao-Kupper with threshold theta > 0.

    With pi = exp(r) and nu = exp(theta): P(a > b) = pi_a / (pi_a + nu pi_b) = sigmoid(-delta - theta) and
    P(tie) = (nu^2 - 1) pi_a pi_b / ((pi_a + nu pi_b)(pi_b + nu pi_a)), computed in log space.
    """
    delta = r_b - r_a
    log_a = F.logsigmoid(-delta - theta)
    log_b = F.logsigmoid(delta - theta)
    # log(expm1(2 theta)) stays finite for small theta through log(expm1(x)) = x + log(1 - exp(-x)).
    two_theta = 2.0 * theta
    log_nu2_minus_1 = two_theta + torch.log(-torch.expm1(-two_theta))
    log_tie = (
        log_nu2_minus_1 + r_a + r_b
        - torch.logaddexp(r_a, theta + r_b)
        - torch.logaddexp(r_b, theta + r_a)
    )
    return log_a, log_tie, log_b


def rao_kupper_loss(r_a: torch.Tensor, r_b: torch.Tensor, d: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """Per triple: the negative log-likelihood of the observed d under Rao-Kupper (ties included)."""
    log_a, log_tie, log_b = rao_kupper_log_probs(r_a, r_b, theta)
    log_p = torch.where(d < 0, log_a, torch.where(d > 0, log_b, log_tie))
    return -log_p


def theta_from_raw(raw: torch.Tensor) -> torch.Tensor:
    """The Rao-Kupper threshold from an unconstrained parameter: softplus keeps it positive."""
    return F.softplus(raw)


def raw_from_theta(theta: float) -> float:
    """Inverse of `theta_from_raw`, to initialize the raw parameter at a chosen threshold."""
    return theta + math.log(-math.expm1(-theta))


def _none(r_a, r_b, d, *, margin, tau, theta):
    # Eq. 3 as written: the mean over every triple, ties contributing their constant margin.
    return hinge_loss(r_a, r_b, d, margin)


def _band(r_a, r_b, d, *, margin, tau, theta):
    return torch.where(d == 0, band_tie_loss(r_a, r_b, tau), hinge_loss(r_a, r_b, d, margin))


def _rao_kupper(r_a, r_b, d, *, margin, tau, theta):
    if theta is None:
        raise ValueError("tie_loss rao_kupper needs the learned threshold theta")
    return rao_kupper_loss(r_a, r_b, d, theta)


# name -> per-triple loss; `RewardConfig.tie_loss` chooses one.
TIE_LOSSES: dict[str, Callable[..., torch.Tensor]] = {"none": _none, "band": _band, "rao_kupper": _rao_kupper}


def reward_loss(r_a: torch.Tensor, r_b: torch.Tensor, d: torch.Tensor, *, tie_loss: str = "none",
                margin: float = 1.0, tau: float = 0.25, theta: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss to optimize (mean over the batch) and detached values to log.

    Logged: `loss_eq3` (Eq. 3 over every triple, ties' constant included), `loss_eq3_strict` (Eq. 3 over
    strict pairs only, i.e. without the constant tie term), `tie_share`, `accuracy` (strict pairs ranked
    the way d says), `reward_gap` (mean d * delta over strict pairs).
    """
    if tie_loss not in TIE_LOSSES:
        raise ValueError(f"unknown tie_loss {tie_loss!r}; known: {', '.join(TIE_LOSSES)}")
    per_triple = TIE_LOSSES[tie_loss](r_a, r_b, d, margin=margin, tau=tau, theta=theta)
    loss = per_triple.mean()
    with torch.no_grad():
        eq3 = hinge_loss(r_a, r_b, d, margin)
        strict = d != 0
        n_strict = strict.sum()
        signed = d.to(r_a.dtype) * (r_b - r_a)
        zero = torch.zeros((), dtype=r_a.dtype, device=r_a.device)
        stats = {
            "loss_eq3": eq3.mean(),
            "loss_eq3_strict": eq3[strict].mean() if n_strict > 0 else zero,
            "tie_share": (~strict).to(r_a.dtype).mean(),
            "accuracy": (signed[strict] > 0).to(r_a.dtype).mean() if n_strict > 0 else zero,
            "reward_gap": signed[strict].mean() if n_strict > 0 else zero,
        }
        if theta is not None:
            stats["theta"] = theta.detach().reshape(())
    return loss, stats
