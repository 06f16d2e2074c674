"""Edge inputs of the core: integer rewards, NaN where it must be ignored, empty rollouts, padding that holds
NaN or inf, -inf logits, and numbers the KL controllers cannot use. Expectations computed by hand."""

import math

import pytest
import torch

from gradascent.core import (
    aggregate,
    batch_mean_advantages,
    categorical_kl,
    clipped_surrogate_loss,
    discounted_returns,
    entropy_from_logits,
    gae,
    group_advantages,
    kl_penalized_rewards,
    nstep_returns,
    policy_gradient_loss,
    rloo_advantages,
    token_logprobs,
    value_loss,
    whiten,
)
from gradascent.core.kl import adaptive_kl_coef, proportional_kl_coef

T_ = torch.tensor
NAN, INF = float("nan"), float("inf")


def test_integer_rewards_are_taken_as_float():
    # r = [1, 1, 1], gamma = 0.5: G = [1 + 0.5 + 0.25, 1 + 0.5, 1] = [1.75, 1.5, 1.0]
    r = T_([[1, 1, 1]])
    assert torch.equal(discounted_returns(r, 0.5), T_([[1.75, 1.5, 1.0]]))
    assert torch.equal(nstep_returns(r, torch.zeros(1, 3), 0.5, n=1), T_([[1.0, 1.0, 1.0]]))
    adv, ret = gae(r, torch.zeros(1, 3), torch.zeros(1, 3), 0.5, 1.0)
    assert torch.equal(adv, T_([[1.75, 1.5, 1.0]])) and torch.equal(ret, adv)
    # a 0/1 exact-match group [1, 0, 0, 1]: mean 0.5, unbiased std sqrt(1/3)
    a = group_advantages(T_([[1, 0, 0, 1]]), eps=0.0)
    assert torch.allclose(a, T_([[1.0, -1.0, -1.0, 1.0]]) * 0.5 / math.sqrt(1 / 3))
    assert torch.equal(rloo_advantages(T_([True, False]), group_size=2), T_([1.0, -1.0]))
    assert torch.equal(batch_mean_advantages(T_([2, 0])), T_([1.0, -1.0]))


def test_values_after_a_termination_cannot_leak_back():
    # Step 1 terminates; its next value is NaN and must be ignored: G_1 = 1, G_0 = 1 + 0.9 * 1 = 1.9.
    r, term = T_([[1.0, 1.0]]), T_([[False, True]])
    assert torch.equal(discounted_returns(r, 0.9, terminated=term, next_values=T_([[0.0, NAN]])), T_([[1.9, 1.0]]))
    adv, _ = gae(r, torch.zeros(1, 2), T_([[0.0, INF]]), 0.9, 1.0, terminated=term)
    assert torch.equal(adv, T_([[1.9, 1.0]]))
    assert torch.equal(nstep_returns(r, T_([[0.0, NAN]]), 0.9, n=1, terminated=term)[0, 1], T_(1.0))
    # A NaN reward in the next episode stays in it: G_0 = 1 (the episode ends at step 0).
    for flags in ({"terminated": T_([[True, False]])}, {"truncated": T_([[True, False]])}):
        G = discounted_returns(T_([[1.0, NAN]]), 0.9, **flags)
        assert G[0, 0] == 1.0 and math.isnan(G[0, 1])
        adv, _ = gae(T_([[1.0, NAN]]), torch.zeros(1, 2), torch.zeros(1, 2), 0.9, 0.95, **flags)
        assert adv[0, 0] == 1.0 and math.isnan(adv[0, 1])


def test_empty_rollouts_give_empty_results():
    r = torch.zeros(3, 0)
    assert discounted_returns(r, 0.9).shape == (3, 0)
    assert nstep_returns(r, r, 0.9, n=5).shape == (3, 0)
    adv, ret = gae(r, r, r, 0.9, 0.95)
    assert adv.shape == ret.shape == (3, 0)
    for mode in ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"):
        assert aggregate(r, r.bool(), mode).item() == 0.0


def test_nan_and_inf_in_padding_reach_neither_the_loss_nor_the_gradient():
    mask = T_([[True, False]])
    logp = T_([[-1.0, -2.0]], requires_grad=True)
    loss, _ = policy_gradient_loss(logp, T_([[1.0, NAN]]), mask)
    loss.backward()
    assert loss.item() == 1.0 and torch.equal(logp.grad, T_([[-1.0, 0.0]]))  # d(-logp * A)/dlogp = -A
    for logp_old, adv in ((T_([[-1.0, -INF]]), T_([[1.0, 0.0]])), (T_([[-1.0, 0.0]]), T_([[1.0, INF]]))):
        logp.grad = None
        loss, stats = clipped_surrogate_loss(logp, logp_old, adv, mask)
        loss.backward()  # ratio 1 on the counted token: loss -1, gradient -A = -1
        assert loss.item() == -1.0 and torch.equal(logp.grad, T_([[-1.0, 0.0]]))
        assert stats["ratio_mean"].item() == 1.0
    v = T_([[2.0, 0.0]], requires_grad=True)
    loss, _ = value_loss(v, T_([[1.0, INF]]), T_([[2.0, NAN]]), clip_eps=0.5, mask=mask)
    loss.backward()  # 1/2 (2 - 1)^2, gradient (V - G) = 1
    assert loss.item() == 0.5 and torch.equal(v.grad, T_([[1.0, 0.0]]))


def test_minus_inf_logits_have_probability_zero():
    # Two equal logits and a masked-out third: H = ln 2; KL(p || q) with q = softmax([0, 1, 2]):
    # sum over the two live tokens of 0.5 * (ln 0.5 - log q)
    z = T_([0.0, 0.0, -INF], requires_grad=True)
    H = entropy_from_logits(z)
    H.backward()
    assert math.isclose(H.item(), math.log(2), rel_tol=1e-6) and torch.isfinite(z.grad).all()
    logq = torch.log_softmax(T_([0.0, 1.0, 2.0], dtype=torch.float64), -1)
    expected = 0.5 * (math.log(0.5) - logq[0].item()) + 0.5 * (math.log(0.5) - logq[1].item())
    assert math.isclose(categorical_kl(z.detach(), T_([0.0, 1.0, 2.0])).item(), expected, rel_tol=1e-6)
    # float64 logits keep float64; q = 0 where p > 0 makes the KL inf
    kl64 = categorical_kl(T_([0.0, 0.0, -INF], dtype=torch.float64), T_([0.0, 1.0, 2.0], dtype=torch.float64))
    assert kl64.dtype == torch.float64 and abs(kl64.item() - expected) < 1e-12
    assert categorical_kl(T_([0.0, 0.0]), T_([0.0, -INF])).item() == INF


def test_divisors_of_zero_give_zero_and_norm_len_must_be_positive():
    values, none = T_([[1.0, 2.0]]), T_([[False, False]])
    assert aggregate(values, none, "token_mean", num_tokens=0).item() == 0.0
    assert aggregate(values, none, "token_mean", num_tokens=T_(0.0)).item() == 0.0
    assert aggregate(values, none, "seq_mean_token_mean", num_seqs=0).item() == 0.0
    assert aggregate(values, None, "token_mean", num_tokens=T_(4.0)).item() == 0.75
    with pytest.raises(ValueError, match="norm_len must be > 0"):
        aggregate(values, None, "seq_mean_token_sum_norm", norm_len=0)
    with pytest.raises(ValueError, match=">= 0"):
        aggregate(values, None, "token_mean", num_tokens=-1)


def test_impossible_numbers_are_named():
    with pytest.raises(ValueError, match="temperature"):
        token_logprobs(torch.zeros(1, 3), T_([0]), temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        entropy_from_logits(torch.zeros(1, 3), temperature=NAN)
    with pytest.raises(ValueError, match="clip_eps_low < 1"):
        clipped_surrogate_loss(torch.zeros(2), torch.zeros(2), torch.ones(2), clip_eps_low=1.5)
    with pytest.raises(ValueError, match="kl = nan"):
        adaptive_kl_coef(1.0, NAN, 0.01)
    with pytest.raises(ValueError, match="kl_coef = inf"):
        proportional_kl_coef(INF, 0.01, 0.01, 8, 100.0)
    with pytest.raises(ValueError, match="bool mask"):
        whiten(torch.ones(3), torch.ones(3))
    with pytest.raises(ValueError, match=r"score must have shape \(2,\)"):
        kl_penalized_rewards(torch.ones(2, 1), torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), 0.1)


def test_shapes_that_would_broadcast_are_refused():
    # (4,) against (4, 1) would make a 4 x 4 product and a scalar that means nothing
    with pytest.raises(ValueError, match=r"adv has shape \(4, 1\), logp \(4,\)"):
        policy_gradient_loss(torch.zeros(4), torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"logp_old has shape \(4, 1\)"):
        clipped_surrogate_loss(torch.zeros(4), torch.zeros(4, 1), torch.zeros(4))
    with pytest.raises(ValueError, match=r"returns has shape \(4, 1\)"):
        value_loss(torch.zeros(4), torch.zeros(4, 1))
    with pytest.raises(ValueError, match=r"mask has shape \(2, 1\)"):
        policy_gradient_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 1, dtype=torch.bool))
    from gradascent.core import bradley_terry_loss
    with pytest.raises(ValueError, match=r"r_rejected has shape \(3, 1\)"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(3, 1))


def test_discount_and_gae_parameters_must_be_rates():
    r = torch.ones(1, 2)
    with pytest.raises(ValueError, match="gamma must be in \\[0, 1\\], got 2.0"):
        discounted_returns(r, 2.0)
    with pytest.raises(ValueError, match="gamma must be in"):
        nstep_returns(r, r, -0.1, n=1)
    with pytest.raises(ValueError, match="lam must be in \\[0, 1\\], got nan"):
        gae(r, r, r, 0.9, NAN)
