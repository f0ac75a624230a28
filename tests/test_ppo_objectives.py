"""Eq. 4 / PPO formulas against values computed by hand (batray.objectives.ppo)."""

from __future__ import annotations

import math

import pytest
import torch

from batray.objectives import ppo as P

M = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])  # second response: 2 tokens, then padding


def test_kl_estimators_by_name():
    logp = torch.tensor([math.log(0.5), math.log(0.2)])
    ref = torch.tensor([math.log(0.25), math.log(0.4)])
    # k1 = log(p/q): log 2, log 0.5
    assert torch.allclose(P.kl_penalty(logp, ref, "k1"), torch.tensor([math.log(2), math.log(0.5)]))
    # k2 = 0.5 log(p/q)^2
    assert torch.allclose(P.kl_penalty(logp, ref, "k2"), torch.tensor([0.5 * math.log(2) ** 2, 0.5 * math.log(0.5) ** 2]))
    # k3 = q/p - 1 - log(q/p): (0.5 - 1 - log 0.5), (2 - 1 - log 2)
    assert torch.allclose(P.kl_penalty(logp, ref, "k3"), torch.tensor([-0.5 + math.log(2), 1 - math.log(2)]))
    assert set(P.KL_ESTIMATORS) == {"k1", "k2", "k3"}
    with pytest.raises(ValueError, match="unknown KL estimator"):
        P.kl_penalty(logp, ref, "k9")


def test_kl_controllers():
    fixed = P.make_kl_controller("fixed", 0.1)
    assert fixed.update(100.0, 64) == 0.1
    ada = P.make_kl_controller("adaptive", 0.1, target=6.0, horizon=100)
    # KL 9 vs target 6: error clip(0.5) = 0.2; factor 1 + 0.2 * 10/100 = 1.02
    assert ada.update(9.0, 10) == pytest.approx(0.102)
    # KL 3: error -0.5 -> -0.2; factor 1 - 0.2 * 10/100 = 0.98
    assert ada.update(3.0, 10) == pytest.approx(0.102 * 0.98)
    # KL 6.6: error 0.1; factor 1.01
    state = ada.state_dict()
    ada.update(6.6, 10)
    assert ada.value == pytest.approx(0.102 * 0.98 * 1.01)
    ada.load_state_dict(state)
    assert ada.value == pytest.approx(0.102 * 0.98)


def test_normalized_score_and_shaped_rewards():
    scores = P.normalize_scores(torch.tensor([3.0, -20.0]), mean=1.0, std=2.0, clip=5.0)
    assert scores.tolist() == [1.0, -5.0]  # (3-1)/2 = 1; (-20-1)/2 = -10.5 -> clipped
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.4, -0.2, 9.0]])
    r = P.shaped_rewards(scores, kl, M, kl_coef=0.5)
    # -0.5 * kl on real tokens; the score on each sequence's last real token; padding stays 0
    expected = torch.tensor([[-0.05, -0.1, -0.15 + 1.0], [-0.2, 0.1 - 5.0, 0.0]])
    assert torch.allclose(r, expected)


def test_gae_by_hand():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 2.0, 0.0]])
    values = torch.tensor([[0.1, 0.2, 0.3], [0.4, 0.6, 7.0]])  # 7.0 sits on padding: ignored
    gamma, lam = 0.9, 0.8
    adv, ret = P.gae_advantages(rewards, values, M, gamma, lam)
    # row 0: d2 = 1 - 0.3 = 0.7; d1 = 0 + .9*.3 - .2 = 0.07; d0 = 0 + .9*.2 - .1 = 0.08
    a2 = 0.7
    a1 = 0.07 + 0.72 * a2
    a0 = 0.08 + 0.72 * a1
    # row 1 (ends at t=1): d1 = 2 - 0.6 = 1.4; d0 = 0.5 + 0.9*0.6 - 0.4 = 0.64
    b1 = 1.4
    b0 = 0.64 + 0.72 * b1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2], [b0, b1, 0.0]]), atol=1e-6)
    assert torch.allclose(ret, torch.tensor([[a0 + 0.1, a1 + 0.2, a2 + 0.3], [b0 + 0.4, b1 + 0.6, 0.0]]), atol=1e-6)
    # gamma = lam = 1: the advantage is the reward-to-go minus the value
    adv1, _ = P.gae_advantages(rewards, values, M, 1.0, 1.0)
    assert torch.allclose(adv1[0], torch.tensor([1.0 - 0.1, 1.0 - 0.2, 1.0 - 0.3]))


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 100.0]])
    w = P.masked_whiten(x, M)
    real = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    expected = (real - 3.0) / real.std()  # unbiased std, as verl/TRL
    assert torch.allclose(w[M.bool()], expected, atol=1e-5)
    assert w[1, 2] == 0.0
    assert torch.allclose(P.masked_whiten(x, M, shift_mean=False)[M.bool()], expected + 3.0, atol=1e-5)


def test_policy_loss_clipping_and_dual_clip():
    old = torch.zeros(1, 4)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1, 3.0]]))  # ratios 1.5, 0.5, 1.1, 3.0
    adv = torch.tensor([[1.0, 1.0, -2.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = P.policy_loss(logp, old, adv, mask, clip_range=0.2)
    # per token max(-A r, -A clip(r)): [-1.2, -0.5, 2.2, 3.0]
    per_token = torch.tensor([-1.2, -0.5, 2.2, 3.0])
    assert loss.item() == pytest.approx(per_token.mean().item())
    # clipped branch strictly larger on token 0 (-1.2 > -1.5) and 3 (... -1*1.2 vs -1*3: no); token 2: -(-2)*1.1=2.2 vs 2.2 no
    assert stats["clip_frac"].item() == pytest.approx(0.25)
    # dual clip c=2: negative-advantage tokens bounded by -A*c: token 3: min(3.0, 2.0) = 2.0; token 2: min(2.2, 4) = 2.2
    dual, _ = P.policy_loss(logp, old, adv, mask, clip_range=0.2, dual_clip=2.0)
    assert dual.item() == pytest.approx(torch.tensor([-1.2, -0.5, 2.2, 2.0]).mean().item())
    # approx KL(pi_old || pi) (k3 under samples from pi_old): mean over tokens of (r - 1 - log r), r = pi / pi_old
    r = torch.tensor([1.5, 0.5, 1.1, 3.0])
    assert stats["approx_kl"].item() == pytest.approx((r - 1 - r.log()).mean().item(), rel=1e-5)
    # masked tokens do not count
    masked, _ = P.policy_loss(logp, old, adv, torch.tensor([[1.0, 1.0, 0.0, 0.0]]), clip_range=0.2)
    assert masked.item() == pytest.approx((-1.2 - 0.5) / 2)


def test_value_loss_clipped():
    values = torch.tensor([[1.0, 0.0]])
    old = torch.tensor([[0.5, 0.0]])
    returns = torch.tensor([[2.0, 1.0]])
    mask = torch.ones(1, 2)
    loss, stats = P.value_loss(values, old, returns, mask, clip=0.2)
    # token 0: unclipped (1-2)^2 = 1; clipped V = 0.5 + 0.2 = 0.7 -> (0.7-2)^2 = 1.69; max 1.69
    # token 1: both (0-1)^2 = 1
    assert loss.item() == pytest.approx(0.5 * (1.69 + 1.0) / 2)
    assert stats["value_clip_frac"].item() == pytest.approx(0.5)
    plain, _ = P.value_loss(values, old, returns, mask, clip=None)
    assert plain.item() == pytest.approx(0.5 * (1.0 + 1.0) / 2)


def test_entropy_explained_variance_and_logprobs():
    logits = torch.log(torch.tensor([[[0.5, 0.25, 0.25], [1 / 3, 1 / 3, 1 / 3]]]))
    ent = P.entropy_from_logits(logits)
    assert torch.allclose(ent, torch.tensor([[1.5 * math.log(2), math.log(3)]]), atol=1e-6)
    assert torch.allclose(P.token_logprobs(logits, torch.tensor([[0, 2]])), torch.tensor([[math.log(0.5), math.log(1 / 3)]]))
    returns = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 0.0]])
    assert P.explained_variance(returns, returns, M).item() == pytest.approx(1.0)
    const = torch.full_like(returns, 3.0)
    assert P.explained_variance(const, returns, M).item() == pytest.approx(0.0, abs=1e-6)


def test_eq4_combination():
    ppo_loss, ptx = torch.tensor(0.7), torch.tensor(2.5)
    assert P.eq4_policy_loss(ppo_loss, ptx, 0.1).item() == pytest.approx(0.95)
    assert P.eq4_policy_loss(ppo_loss, ptx, 0.0).item() == pytest.approx(0.7)
    assert P.eq4_policy_loss(ppo_loss, None, 0.5).item() == pytest.approx(0.7)


def test_approx_kl_estimates_kl_old_to_new_under_old_samples():
    """The logged approx_kl is KL(pi_old || pi) for tokens drawn from pi_old (the rollout policy):
    exactly in expectation, and within Monte-Carlo error on a sample."""
    old = torch.tensor([0.5, 0.3, 0.15, 0.05])
    new = torch.tensor([0.2, 0.3, 0.3, 0.2])
    kl_old_new = float((old * (old / new).log()).sum())  # 0.296
    kl_new_old = float((new * (new / old).log()).sum())  # 0.383: a wrong direction would show
    per_token = P.approx_kl(new.log(), old.log())  # logp (new), old_logp, for each token value
    assert float((old * per_token).sum()) == pytest.approx(kl_old_new, rel=1e-6)
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(old, 200_000, replacement=True, generator=g)
    samples = P.approx_kl(new.log()[x], old.log()[x])
    mc, stderr = float(samples.mean()), float(samples.std()) / len(x) ** 0.5
    assert abs(mc - kl_old_new) < 4 * stderr and stderr < 0.002
    assert abs(mc - kl_new_old) > 20 * stderr and (samples >= 0).all()
    # through policy_loss, the logged stat is the token mean of the same estimate
    _, stats = P.policy_loss(new.log()[x][None], old.log()[x][None], torch.zeros(1, len(x)), torch.ones(1, len(x)), 0.2)
    assert float(stats["approx_kl"]) == pytest.approx(mc, rel=1e-5)


L = torch.tensor([[1.0, 2.0, 3.0, 4.0], [10.0, 20.0, 0.0, 0.0], [5.0, 0.0, 0.0, 0.0], [7.0, 7.0, 7.0, 7.0]])
LM = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0]])


def test_loss_aggregation_modes_by_hand():
    # row 2 has no response tokens: it counts neither as a token nor as a sequence
    assert P.agg_loss(L, LM, "token_mean").item() == pytest.approx((10 + 30 + 21) / 9)
    assert P.agg_loss(L, LM, "seq_mean_token_mean").item() == pytest.approx((2.5 + 15 + 7) / 3)
    assert P.agg_loss(L, LM, "seq_mean_token_sum").item() == pytest.approx((10 + 30 + 21) / 3)
    assert P.loss_agg_count(LM, "token_mean").item() == 9 and P.loss_agg_count(LM, "seq_mean_token_sum").item() == 3
    assert P.LOSS_AGG_MODES == ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum")  # verl's names
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        P.agg_loss(L, LM, "token_sum")


@pytest.mark.parametrize("mode", ["token_mean", "seq_mean_token_mean", "seq_mean_token_sum"])
def test_micro_batches_with_the_minibatch_count_add_up_to_one_batch(mode):
    """Uneven lengths: the four micro batches' losses, each over the whole minibatch's count, sum to the
    loss of the sixteen rows at once; for token_mean the equal-weight mean of the micro batches' own
    means does not (equal-size micro batches of non-empty rows make it exact for the sequence means)."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([7, 6, 7, 5, 1, 2, 1, 3, 6, 7, 4, 7, 2, 1, 2, 1])
    mask = (torch.arange(8)[None] < lengths[:, None]).float()
    losses = torch.randn(16, 8, generator=g)
    whole = P.agg_loss(losses, mask, mode)
    count = P.loss_agg_count(mask, mode)
    parts = [P.agg_loss(losses[i : i + 4], mask[i : i + 4], mode, count) for i in range(0, 16, 4)]
    assert float(sum(parts)) == pytest.approx(float(whole), rel=1e-6)
    if mode == "token_mean":
        naive = sum(P.agg_loss(losses[i : i + 4], mask[i : i + 4], mode) for i in range(0, 16, 4)) / 4
        assert abs(float(naive) - float(whole)) > 1e-2


def test_clamps_are_off_by_default_and_bound_when_set():
    from batray.config.rl import PpoConfig

    cfg = PpoConfig()
    assert cfg.kl_clamp is None and cfg.log_ratio_clamp is None and cfg.loss_agg == "token_mean"
    logp, ref = torch.tensor([-40.0, -1.0]), torch.tensor([-10.0, -1.5])  # log(pi/pi_inst) = -30, 0.5
    # off: k3 = e^30 - 1 - 30 on the first token, as the formula says
    assert P.kl_penalty(logp, ref, "k3")[0].item() == pytest.approx(math.expm1(30.0) - 30.0, rel=1e-5)
    # verl's bounds: log-ratio to [-20, 20] inside the estimator, then the estimate to [-10, 10]
    inside = P.kl_penalty(logp, ref, "k3", log_ratio_clamp=20.0)
    assert inside[0].item() == pytest.approx(math.expm1(20.0) - 20.0, rel=1e-5)
    both = P.kl_penalty(logp, ref, "k3", log_ratio_clamp=20.0, kl_clamp=10.0)
    assert both[0].item() == 10.0
    assert both[1].item() == pytest.approx(math.expm1(-0.5) + 0.5)  # small log-ratios are untouched
    assert P.kl_penalty(logp, ref, "k1", log_ratio_clamp=20.0)[0].item() == -20.0
    assert P.kl_penalty(logp, ref, "k1", kl_clamp=10.0)[0].item() == -10.0
    # the PPO ratio: exp(log pi - log pi_old) with the log-ratio bounded first
    new, old = torch.tensor([[0.0]]), torch.tensor([[-50.0]])
    adv, mask = torch.tensor([[-1.0]]), torch.ones(1, 1)
    unbounded, _ = P.policy_loss(new, old, adv, mask, clip_range=0.2)
    bounded, _ = P.policy_loss(new, old, adv, mask, clip_range=0.2, log_ratio_clamp=20.0)
    assert unbounded.item() == pytest.approx(math.exp(50.0), rel=1e-5)  # -A * r for A < 0, unclipped side
    assert bounded.item() == pytest.approx(math.exp(20.0), rel=1e-5)
    with pytest.raises(ValueError):
        PpoConfig(kl_clamp=0.0)
    with pytest.raises(ValueError):
        PpoConfig(loss_agg="token_sum")
