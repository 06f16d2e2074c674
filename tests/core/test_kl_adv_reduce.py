"""KL estimators and controllers, advantages and masked aggregation, by hand and by identity."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradascent.core import (
    adaptive_kl_coef,
    advantages_from_returns,
    aggregate,
    batch_mean_advantages,
    categorical_kl,
    explained_variance,
    group_advantages,
    kl_estimate,
    masked_mean,
    masked_sum,
    masked_var,
    proportional_kl_coef,
    rloo_advantages,
    whiten,
)

T_ = torch.tensor


def test_kl_estimators_by_hand():
    # logp = log 0.5, logp_ref = log 0.25: log r = logp_ref - logp = -log 2.
    logp, ref = T_([math.log(0.5)]), T_([math.log(0.25)])
    ln2 = math.log(2)
    assert math.isclose(kl_estimate(logp, ref, "k1").item(), ln2, rel_tol=1e-6)
    assert math.isclose(kl_estimate(logp, ref, "k2").item(), 0.5 * ln2**2, rel_tol=1e-6)
    assert math.isclose(kl_estimate(logp, ref, "k3").item(), 0.5 - 1 + ln2, rel_tol=1e-6)  # r - 1 - log r


def test_k1_and_k3_are_unbiased_and_k2_is_not():
    # Enumerate the actions: sum_a p(a) k(a) must equal the exact KL(p||q) for k1 and k3.
    g = torch.Generator().manual_seed(0)
    lp = torch.randn(5, dtype=torch.float64, generator=g)
    lq = torch.randn(5, dtype=torch.float64, generator=g)
    logp, logq = lp.log_softmax(-1), lq.log_softmax(-1)
    exact = categorical_kl(lp, lq).double()
    p = logp.exp()
    for kind in ("k1", "k3"):
        assert torch.allclose((p * kl_estimate(logp, logq, kind)).sum(), exact, atol=1e-6)
    assert not torch.allclose((p * kl_estimate(logp, logq, "k2")).sum(), exact, atol=1e-3)


def test_gradients_of_the_estimators_as_loss_terms():
    # As a loss term (GRPO's penalty) each estimator is differentiated at fixed samples a ~ pi_theta:
    # E_pi[grad k(a)] = sum_a pi(a) grad k(a), with pi(a) held out of the gradient. docs/equations.md, section 5:
    # k1 -> 0, k2 -> grad KL(pi || pi_ref), k3 -> grad KL(pi_ref || pi).
    g = torch.Generator().manual_seed(1)
    theta0 = torch.randn(5, dtype=torch.float64, generator=g)
    logq = torch.randn(5, dtype=torch.float64, generator=g).log_softmax(-1)

    def grad(f):
        theta = theta0.clone().requires_grad_(True)
        f(theta).backward()
        return theta.grad

    def expected_grad(kind):
        return grad(lambda th: (th.softmax(-1).detach() * kl_estimate(th.log_softmax(-1), logq, kind)).sum())

    forward = grad(lambda th: categorical_kl(th, logq))  # KL(pi || pi_ref)
    reverse = grad(lambda th: categorical_kl(logq, th))  # KL(pi_ref || pi)
    assert torch.allclose(expected_grad("k1"), torch.zeros(5, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(expected_grad("k2"), forward, atol=1e-10)
    assert torch.allclose(expected_grad("k3"), reverse, atol=1e-10)
    assert not torch.allclose(forward, reverse, atol=1e-3)  # the two KLs' gradients differ here


def test_grpo_refuses_a_k1_penalty():
    from gradascent.algos.grpo import GRPOConfig
    from gradascent.errors import ConfigError

    with pytest.raises(ConfigError, match="'kl_estimator': 'k1' is not allowed.*expected gradient of 0"):
        GRPOConfig(beta=0.04, kl_estimator="k1")
    assert GRPOConfig(beta=0.0, kl_estimator="k1").kl_estimator == "k1"  # no penalty: nothing to refuse
    assert GRPOConfig(beta=0.04, kl_estimator="k2").kl_estimator == "k2"


def test_categorical_kl_by_hand():
    # p = [0.5, 0.5], q = [0.25, 0.75]: 0.5 ln 2 + 0.5 ln(2/3)
    kl = categorical_kl(torch.log(T_([0.5, 0.5])), torch.log(T_([0.25, 0.75])))
    assert math.isclose(kl.item(), 0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel_tol=1e-6)
    assert categorical_kl(T_([1.0, 2.0]), T_([1.0, 2.0])).item() == pytest.approx(0.0, abs=1e-7)


def test_adaptive_kl_coef_default_and_paper_thresholds():
    # target 0.01, defaults threshold 2, factor 2: below 0.005 halve, above 0.02 double.
    assert adaptive_kl_coef(1.0, 0.004, 0.01) == 0.5
    assert adaptive_kl_coef(1.0, 0.03, 0.01) == 2.0
    assert adaptive_kl_coef(1.0, 0.006, 0.01) == 1.0
    assert adaptive_kl_coef(1.0, 0.019, 0.01) == 1.0
    # PPO paper: threshold 1.5 -> 0.006 < 0.00667 halves, 0.016 > 0.015 doubles.
    assert adaptive_kl_coef(1.0, 0.006, 0.01, threshold=1.5) == 0.5
    assert adaptive_kl_coef(1.0, 0.016, 0.01, threshold=1.5) == 2.0
    with pytest.raises(ValueError):
        adaptive_kl_coef(1.0, 0.01, 0.0)


def test_proportional_kl_coef_by_hand():
    # KL/target - 1 = 0.2 (inside the clip): beta * (1 + 0.2 * 100/1000) = 0.1 * 1.02
    assert math.isclose(proportional_kl_coef(0.1, 0.12, 0.1, 100, 1000), 0.102)
    # A KL ten times the target is clipped to +0.2: same step.
    assert math.isclose(proportional_kl_coef(0.1, 1.0, 0.1, 100, 1000), 0.102)
    # Far below target: clipped to -0.2.
    assert math.isclose(proportional_kl_coef(0.1, 0.0, 0.1, 100, 1000), 0.098)


def test_group_advantages_by_hand():
    # Group [1, 2, 3]: mean 2, unbiased std 1 -> [-1, 0, 1] / (1 + eps).
    r = T_([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0]])
    adv = group_advantages(r, eps=1e-4)
    assert torch.allclose(adv[0], T_([-1.0, 0.0, 1.0]) / (1 + 1e-4), atol=1e-7)
    assert torch.equal(adv[1], torch.zeros(3))  # identical rewards carry no signal: 0 / (0 + eps)
    # Without the std (Dr. GRPO) only the mean is removed: [2, 4, 6] -> [-2, 0, 2]
    assert torch.equal(group_advantages(T_([2.0, 4.0, 6.0]), group_size=3, scale_by_std=False), T_([-2.0, 0.0, 2.0]))


def test_groups_of_equal_rewards_get_exactly_zero():
    # Eight rewards of 0.1: in float32 their mean is not exactly 0.1, and (r - mean) / (std + 1e-4) would be
    # -7.45e-5 for every completion. Exactly 0 is the advantage of a group that scored alike.
    r = torch.full((2, 8), 0.1)
    r[1, 0] = 0.3
    assert float((r[0] - r[0].mean()).abs().max()) > 0  # the rounding the functions must not pass on
    for adv in (group_advantages(r), group_advantages(r, scale_by_std=False), rloo_advantages(r)):
        assert torch.equal(adv[0], torch.zeros(8))
        assert bool((adv[1] != 0).all())


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5), st.integers(2, 6), st.data())
def test_group_advantages_have_zero_mean_per_group(P, G, data):
    vals = data.draw(st.lists(st.floats(-10, 10), min_size=P * G, max_size=P * G))
    r = torch.tensor(vals, dtype=torch.float64)
    for scale in (True, False):
        adv = group_advantages(r, group_size=G, scale_by_std=scale).reshape(P, G)
        assert torch.allclose(adv.sum(-1), torch.zeros(P, dtype=torch.float64), atol=1e-9)
    loo = rloo_advantages(r, group_size=G).reshape(P, G)
    assert torch.allclose(loo.sum(-1), torch.zeros(P, dtype=torch.float64), atol=1e-9)


def test_rloo_by_hand():
    # [1, 2, 3]: baselines are the means of the others: 2.5, 2, 1.5 -> [-1.5, 0, 1.5]
    assert torch.equal(rloo_advantages(T_([[1.0, 2.0, 3.0]])), T_([[-1.5, 0.0, 1.5]]))
    with pytest.raises(ValueError):
        rloo_advantages(T_([[1.0]]))


def test_whiten_and_simple_advantages():
    assert torch.allclose(whiten(T_([1.0, 2.0, 3.0])), T_([-1.0, 0.0, 1.0]), atol=1e-7)
    # Masked element excluded from the statistics and zeroed: [1, 3] have mean 2, unbiased std sqrt(2).
    w = whiten(T_([1.0, 3.0, 100.0]), T_([True, True, False]), eps=0.0)
    assert torch.allclose(w, T_([-1 / math.sqrt(2), 1 / math.sqrt(2), 0.0]))
    assert torch.equal(advantages_from_returns(T_([3.0, 1.0]), T_([1.0, 1.0])), T_([2.0, 0.0]))
    assert torch.equal(batch_mean_advantages(T_([1.0, 3.0])), T_([-1.0, 1.0]))


def test_explained_variance():
    ret = T_([1.0, 2.0, 3.0])
    assert explained_variance(ret, ret).item() == 1.0
    assert explained_variance(torch.full((3,), 2.0), ret).item() == 0.0  # predicting the mean
    assert math.isnan(explained_variance(ret, torch.ones(3)).item())


def test_three_aggregations_on_sequences_of_different_length():
    # Sequence 0 has 4 tokens [1, 2, 3, 4]; sequence 1 has one token [10] and three padded slots.
    x = T_([[1.0, 2.0, 3.0, 4.0], [10.0, 7.0, 7.0, 7.0]])
    m = T_([[True, True, True, True], [True, False, False, False]])
    assert aggregate(x, m, "token_mean").item() == 20 / 5  # every token weighs 1/5
    assert aggregate(x, m, "seq_mean_token_mean").item() == (2.5 + 10) / 2  # short sequence weighs more
    assert aggregate(x, m, "seq_mean_token_sum_norm", norm_len=4).item() == (10 / 4 + 10 / 4) / 2
    # Divisors from outside (data parallel): global token count 10 -> sum 20 / 10.
    assert aggregate(x, m, "token_mean", num_tokens=10.0).item() == 2.0
    assert aggregate(x, m, "seq_mean_token_mean", num_seqs=4.0).item() == 12.5 / 4


def test_masked_slots_cannot_leak_nan():
    x = T_([[1.0, float("nan")]])
    m = T_([[True, False]])
    assert masked_mean(x, m).item() == 1.0
    assert aggregate(x, m, "seq_mean_token_sum_norm").item() == 0.5


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3, width=32), min_size=1, max_size=40))
def test_no_mask_is_bitwise_an_all_true_mask(values):
    # mask=None takes a shorter path (no weight tensor); it must give exactly what an all-True mask gives.
    x = torch.tensor(values)
    everything = torch.ones_like(x, dtype=torch.bool)
    assert torch.equal(masked_sum(x), masked_sum(x, everything))
    assert torch.equal(masked_mean(x), masked_mean(x, everything))
    assert torch.equal(masked_var(x), masked_var(x, everything))
    assert torch.equal(aggregate(x), aggregate(x, everything))
    m = x.reshape(1, -1)
    assert torch.equal(masked_mean(m, dim=-1), masked_mean(m, everything.reshape(1, -1), dim=-1))
