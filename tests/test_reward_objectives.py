"""Eq. 3 and the tie variants against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from batray.objectives.reward import (
    band_tie_loss, hinge_loss, rao_kupper_log_probs, rao_kupper_loss, raw_from_theta, reward_loss, theta_from_raw,
)


def _rewards():
    #          d=+1 (b wins)  d=-1 (a wins)  d=0 (tie)  d=+1, b far ahead  d=-1 but b ahead
    r_a = torch.tensor([0.5, 2.0, 1.0, -1.0, 0.0], requires_grad=True)
    r_b = torch.tensor([1.0, 0.0, 1.3, 3.0, 0.7], requires_grad=True)
    d = torch.tensor([1, -1, 0, 1, -1])
    return r_a, r_b, d


def test_eq3_matches_hand_computation_for_each_d():
    r_a, r_b, d = _rewards()
    # max(0, 1 - d (r_b - r_a)):  1-0.5 | 1-(-1)(-2) -> 0 | 1 - 0 = 1 | 1-4 -> 0 | 1-(-1)(0.7) = 1.7
    expected = torch.tensor([0.5, 0.0, 1.0, 0.0, 1.7])
    assert torch.allclose(hinge_loss(r_a, r_b, d), expected)
    # a different margin moves every term by the margin, ties included
    assert torch.allclose(hinge_loss(r_a, r_b, d, margin=2.0), torch.tensor([1.5, 0.0, 2.0, 0.0, 2.7]))


def test_eq3_tie_is_a_constant_without_gradient():
    r_a, r_b, d = _rewards()
    loss = hinge_loss(r_a, r_b, d)
    loss.sum().backward()
    # d = 0: no gradient; active hinge terms: dL/dr_b = -d, dL/dr_a = +d; inactive (clamped) terms: 0
    assert torch.allclose(r_b.grad, torch.tensor([-1.0, 0.0, 0.0, 0.0, 1.0]))
    assert torch.allclose(r_a.grad, torch.tensor([1.0, 0.0, 0.0, 0.0, -1.0]))


def test_reward_loss_none_is_the_mean_of_eq3_and_logs_with_and_without_ties():
    r_a, r_b, d = _rewards()
    loss, stats = reward_loss(r_a, r_b, d, tie_loss="none", margin=1.0)
    assert loss.item() == pytest.approx((0.5 + 0 + 1 + 0 + 1.7) / 5)
    assert stats["loss_eq3"].item() == pytest.approx(loss.item())
    assert stats["loss_eq3_strict"].item() == pytest.approx((0.5 + 0 + 0 + 1.7) / 4)
    assert stats["tie_share"].item() == pytest.approx(0.2)
    assert stats["accuracy"].item() == pytest.approx(3 / 4)  # the last strict pair is ranked wrong


def test_band_tie_loss():
    r_a = torch.tensor([1.0, 1.0, 0.0], requires_grad=True)
    r_b = torch.tensor([1.3, 1.1, -0.5], requires_grad=True)
    # |gap| - 0.25 clamped at 0: 0.05, 0 (inside the band), 0.25
    assert torch.allclose(band_tie_loss(r_a, r_b, 0.25), torch.tensor([0.05, 0.0, 0.25]), atol=1e-6)
    # in reward_loss, ties use the band and strict pairs still use Eq. 3
    d = torch.tensor([0, 0, 1])
    loss, stats = reward_loss(r_a, r_b, d, tie_loss="band", tau=0.25)
    assert loss.item() == pytest.approx((0.05 + 0.0 + 1.5) / 3, abs=1e-6)
    loss.backward()
    assert r_b.grad[0] > 0 and r_a.grad[0] < 0  # pulls the tie's rewards together
    assert r_b.grad[1] == 0 and r_a.grad[1] == 0


def test_rao_kupper_matches_the_direct_formula():
    r_a = torch.tensor([0.3, -1.0, 2.0])
    r_b = torch.tensor([0.1, 0.5, 2.0])
    theta = torch.tensor(0.7)
    log_a, log_tie, log_b = rao_kupper_log_probs(r_a, r_b, theta)
    pi_a, pi_b, nu = r_a.exp(), r_b.exp(), math.exp(0.7)
    p_a = pi_a / (pi_a + nu * pi_b)
    p_b = pi_b / (pi_b + nu * pi_a)
    p_tie = (nu**2 - 1) * pi_a * pi_b / ((pi_a + nu * pi_b) * (pi_b + nu * pi_a))
    assert torch.allclose(log_a.exp(), p_a, atol=1e-6)
    assert torch.allclose(log_b.exp(), p_b, atol=1e-6)
    assert torch.allclose(log_tie.exp(), p_tie, atol=1e-6)
    assert torch.allclose(p_a + p_b + p_tie, torch.ones(3), atol=1e-6)
    d = torch.tensor([-1, 1, 0])
    assert torch.allclose(rao_kupper_loss(r_a, r_b, d, theta), -torch.stack([p_a[0], p_b[1], p_tie[2]]).log(), atol=1e-6)


def test_rao_kupper_threshold_is_learned_and_stable():
    raw = torch.tensor(raw_from_theta(0.5), requires_grad=True)
    assert theta_from_raw(raw).item() == pytest.approx(0.5)
    r_a = torch.tensor([0.0, 0.0, 40.0])
    r_b = torch.tensor([0.0, 0.0, -40.0])
    d = torch.tensor([0, 0, -1])
    loss, stats = reward_loss(r_a, r_b, d, tie_loss="rao_kupper", theta=theta_from_raw(raw))
    assert torch.isfinite(loss)
    loss.backward()
    assert raw.grad < 0  # two exact ties: a larger threshold makes them likelier
    assert stats["theta"].item() == pytest.approx(0.5)
    # tiny thresholds stay finite too
    assert torch.isfinite(rao_kupper_log_probs(r_a, r_b, torch.tensor(1e-8))[1]).all()


def test_unknown_tie_loss_is_rejected():
    r_a, r_b, d = _rewards()
    with pytest.raises(ValueError, match="unknown tie_loss"):
        reward_loss(r_a, r_b, d, tie_loss="draw")
