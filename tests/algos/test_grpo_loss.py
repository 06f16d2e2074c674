"""GRPO's advantages and loss on hand-computed groups, assembled through the trainer's own functions."""

import math

import pytest
import torch

from gradascent.algos.grpo import GRPOConfig, advantages, grpo_loss, zero_std_groups
from gradascent.errors import ConfigError

LN = math.log


def test_group_advantages_by_hand():
    # One group of G=4 with rewards [1, 0, 0, 0]: mean 0.25; deviations 0.75, -0.25 x3;
    # unbiased variance (0.5625 + 3 * 0.0625) / 3 = 0.25, std 0.5.
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    eps = 1e-4
    exp = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (0.5 + eps)
    assert torch.allclose(advantages(r, "group", 4, eps), exp, atol=1e-7)
    # Dr. GRPO: no division by the std.
    assert torch.allclose(advantages(r, "group_no_std", 4), torch.tensor([0.75, -0.25, -0.25, -0.25]))
    # RLOO: 1 - mean(0, 0, 0) = 1; 0 - mean(1, 0, 0) = -1/3.
    assert torch.allclose(advantages(r, "rloo", 4), torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))


def test_groups_are_contiguous_and_independent():
    # Two groups of G=2: [1, 0] and [3, 3]. Group 1: mean .5, std sqrt(.5) -> +-0.5/0.70711;
    # group 2 has no spread: advantage exactly 0, and it is the one zero-std group.
    r = torch.tensor([1.0, 0.0, 3.0, 3.0])
    a = advantages(r, "group", 2, eps=1e-4)
    s = math.sqrt(0.5) + 1e-4
    assert torch.allclose(a, torch.tensor([0.5 / s, -0.5 / s, 0.0, 0.0]), atol=1e-6)
    assert zero_std_groups(r, 2).tolist() == [False, False, True, True]
    # The batch-mean baseline ignores the groups: mean 1.75.
    assert torch.allclose(advantages(r, "batch_mean", 2), torch.tensor([-0.75, -1.75, 1.25, 1.25]))


def _batch():
    """Two completions, T=2: row 0 has 2 tokens, row 1 one token (its second slot is padding).

    Ratios r = exp(logp - logp_old): token (0,0) 1.5, token (0,1) 1.0, token (1,0) 0.5.
    Advantages: row 0 +1, row 1 -0.5.
    """
    logp = torch.tensor([[LN(0.5), LN(0.25)], [LN(0.5), 0.0]], requires_grad=True)
    logp_old = torch.tensor([[LN(0.5 / 1.5), LN(0.25)], [LN(0.5 / 0.5), 0.0]])
    mask = torch.tensor([[True, True], [True, False]])
    adv = torch.tensor([1.0, -0.5])
    return logp, logp_old, adv, mask


def test_clipped_loss_by_hand_with_gradient():
    logp, logp_old, adv, mask = _batch()
    cfg = GRPOConfig(clip_eps_low=0.2, clip_eps_high=0.2, loss_agg="seq_mean_token_mean")
    loss, stats = grpo_loss(logp, logp_old, adv, mask, cfg)
    # Per-token objective min(r A, clip(r, 0.8, 1.2) A):
    #   (0,0): min(1.5, 1.2) = 1.2 (clipped); (0,1): 1.0; (1,0): min(0.5 * -0.5, 0.8 * -0.5) = -0.4 (clipped).
    # seq_mean_token_mean: row means 1.1 and -0.4, mean 0.35; the loss is its negative.
    assert loss.item() == pytest.approx(-0.35, abs=1e-6)
    assert stats["clipfrac_high"].item() == pytest.approx(1 / 3)
    assert stats["clipfrac_low"].item() == pytest.approx(1 / 3)
    loss.backward()
    # Clipped tokens carry no gradient. Token (0,1): d(r A)/d logp = r A = 1, weighted 1/2 (its row's
    # token mean) x 1/2 (the mean over rows), negated: -0.25. The padding slot gets nothing.
    assert torch.allclose(logp.grad, torch.tensor([[0.0, -0.25], [0.0, 0.0]]), atol=1e-7)


def test_clip_higher_widens_the_upper_bound_only():
    logp, logp_old, adv, mask = _batch()
    cfg = GRPOConfig(clip_eps_low=0.2, clip_eps_high=0.28)
    loss, _ = grpo_loss(logp, logp_old, adv, mask, cfg)
    # (0,0) is now clipped at 1.28: row means (1.28 + 1)/2 = 1.14 and -0.4 -> 0.37.
    assert loss.item() == pytest.approx(-0.37, abs=1e-6)


@pytest.mark.parametrize("agg, expected", [
    # Ratio 1 everywhere: the objective of each token is its row's advantage, +1 (2 tokens) and -0.5 (1 token).
    ("seq_mean_token_mean", -(1.0 + -0.5) / 2),  # row means 1 and -0.5 (GRPO)
    ("token_mean", -(1.0 + 1.0 - 0.5) / 3),  # every token alike (DAPO)
    ("seq_mean_token_sum_norm", -(2.0 / 4 + -0.5 / 4) / 2),  # row sums over L = 4, the budget (Dr. GRPO)
])
def test_three_aggregations_on_sequences_of_different_length(agg, expected):
    logp, _, adv, mask = _batch()
    cfg = GRPOConfig(loss_agg=agg)
    loss, stats = grpo_loss(logp, logp.detach(), adv, mask, cfg, norm_len=4)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert stats["approx_kl"].item() == 0.0 and stats["clipfrac"].item() == 0.0


def test_global_divisors_replace_local_counts():
    # Under DDP the divisors are global counts / world size: passing num_tokens=6 instead of the local 3
    # halves the token_mean loss; num_seqs=4 instead of 2 halves a seq_mean loss.
    logp, _, adv, mask = _batch()
    tm, _ = grpo_loss(logp, logp.detach(), adv, mask, GRPOConfig(loss_agg="token_mean"), num_tokens=6.0)
    assert tm.item() == pytest.approx(-(1.5 / 6), abs=1e-6)  # token sum 1 + 1 - 0.5 = 1.5
    sm, _ = grpo_loss(logp, logp.detach(), adv, mask, GRPOConfig(loss_agg="seq_mean_token_mean"), num_seqs=4.0)
    assert sm.item() == pytest.approx(-(0.5 / 4), abs=1e-6)


def test_kl_penalty_k3_to_reference():
    logp, logp_old, adv, mask = _batch()
    logp_ref = logp.detach() + LN(2.0)  # pi_ref / pi = 2 on every token
    cfg = GRPOConfig(beta=0.1, loss_agg="seq_mean_token_mean")
    loss, stats = grpo_loss(logp, logp_old, adv, mask, cfg, logp_ref=logp_ref)
    k3 = 2.0 - 1.0 - LN(2.0)  # (rho - 1) - log rho = 0.306853
    assert stats["kl"].item() == pytest.approx(k3, abs=1e-6)
    # -0.35 from the clipped term (above) + beta x the row-mean-then-mean of a constant k3.
    assert loss.item() == pytest.approx(-0.35 + 0.1 * k3, abs=1e-6)
    with pytest.raises(ValueError, match="logp_ref"):
        grpo_loss(logp, logp_old, adv, mask, cfg)


def test_entropy_bonus_and_metric():
    logp, _, adv, mask = _batch()
    entropy = torch.tensor([[1.0, 2.0], [4.0, 99.0]])  # the padding slot must not count
    loss0, stats = grpo_loss(logp, logp.detach(), adv, mask, GRPOConfig(), entropy=entropy)
    assert stats["entropy"].item() == pytest.approx(7.0 / 3)  # token mean over the 3 counted tokens
    loss1, _ = grpo_loss(logp, logp.detach(), adv, mask, GRPOConfig(ent_coef=0.01), entropy=entropy)
    # the bonus subtracts ent_coef x seq_mean_token_mean(H) = 0.01 x (1.5 + 4) / 2
    assert (loss1 - loss0).item() == pytest.approx(-0.01 * 2.75, abs=1e-6)


def test_config_rejects_values_out_of_range():
    with pytest.raises(ConfigError, match="group_size"):
        GRPOConfig(group_size=1)
    with pytest.raises(ConfigError, match="num_minibatches"):
        GRPOConfig(prompts_per_step=3, group_size=4, num_minibatches=2)
    with pytest.raises(ConfigError, match="reward_weights"):
        GRPOConfig(rewards=("numeric_match",), reward_weights=(1.0, 2.0))
    with pytest.raises(ConfigError, match="reward_weights"):
        GRPOConfig(reward_weights=(1.0,))  # weights without the functions they weigh
