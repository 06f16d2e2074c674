"""RLHF pieces of the core: per-token rewards with the KL penalty, and the Bradley-Terry loss."""

import math

import torch

from gradascent.core import bradley_terry_loss, kl_penalized_rewards

T_ = torch.tensor


def test_kl_penalized_rewards_by_hand():
    # Two completions, beta = 0.1, k1 = logp - logp_ref.
    # Row 0: 3 tokens, k1 = [0.5, -0.2, 1.0]  -> rewards [-0.05, 0.02, -0.1 + score 2.0] = [-0.05, 0.02, 1.9]
    # Row 1: 1 token then padding, k1 = [0.3] -> rewards [-0.03 + score -1.0, 0, 0] = [-1.03, 0, 0]
    logp = T_([[-1.0, -2.0, -0.5], [-0.7, -9.0, -9.0]])
    logp_ref = T_([[-1.5, -1.8, -1.5], [-1.0, 0.0, 0.0]])
    mask = T_([[True, True, True], [True, False, False]])
    score = T_([2.0, -1.0])
    rewards, kl = kl_penalized_rewards(score, logp, logp_ref, mask, kl_coef=0.1)
    assert torch.allclose(kl, T_([[0.5, -0.2, 1.0], [0.3, 0.0, 0.0]]), atol=1e-6)
    assert torch.allclose(rewards, T_([[-0.05, 0.02, 1.9], [-1.03, 0.0, 0.0]]), atol=1e-6)
    # The sum of a row's rewards is score - beta * sum of its KL: 2 - 0.1 * 1.3 = 1.87
    assert math.isclose(rewards[0].sum().item(), 1.87, rel_tol=1e-6)


def test_bradley_terry_by_hand():
    # diff = [2, -1]: loss = mean(-log sigmoid(2), -log sigmoid(-1)) = mean(0.126928, 1.313262)
    loss, stats = bradley_terry_loss(T_([3.0, 0.0]), T_([1.0, 1.0]))
    expected = (math.log1p(math.exp(-2)) + math.log1p(math.exp(1))) / 2
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    assert stats["accuracy"].item() == 0.5 and stats["margin"].item() == 0.5
    # A margin of 2 on the first pair turns its term into -log sigmoid(0) = log 2.
    loss_m, _ = bradley_terry_loss(T_([3.0, 0.0]), T_([1.0, 1.0]), margin=T_([2.0, 0.0]))
    assert math.isclose(loss_m.item(), (math.log(2) + math.log1p(math.exp(1))) / 2, rel_tol=1e-6)
    # Centring adds coef * mean((rc + rr)^2) = 0.01 * mean(16, 1) = 0.085
    loss_c, _ = bradley_terry_loss(T_([3.0, 0.0]), T_([1.0, 1.0]), center_coef=0.01)
    assert math.isclose(loss_c.item(), expected + 0.085, rel_tol=1e-6)
