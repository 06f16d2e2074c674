"""Policy, value and entropy losses: hand-computed values, gradients, and the clip's identities."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradascent.core import (
    clipped_surrogate_loss,
    entropy_loss,
    kl_penalty_surrogate_loss,
    policy_gradient_loss,
    value_loss,
)

T_ = torch.tensor


def test_policy_gradient_loss_value_and_gradient():
    # loss = -mean(logp * A) = -(0.5*2 + (-1)*1)/2 = 0; d loss / d logp = -A / N = [-1, -0.5]
    logp = T_([0.5, -1.0], requires_grad=True)
    adv = T_([2.0, 1.0])
    loss, stats = policy_gradient_loss(logp, adv)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logp.grad, T_([-1.0, -0.5]))
    assert stats["policy_loss"].item() == 0.0


def test_clipped_surrogate_by_hand_positive_and_negative_advantage():
    # ratio = 1.5 for both tokens, eps = 0.2.
    # A = +2: min(1.5*2, 1.2*2) = 2.4 -> clipped, no gradient.
    # A = -2: min(-3, -2.4) = -3 -> unclipped, d(-r*A)/dlogp = -r*A/N = 3/2 = 1.5.
    logp_old = torch.zeros(2)
    logp = torch.full((2,), math.log(1.5), requires_grad=True)
    adv = T_([2.0, -2.0])
    loss, stats = clipped_surrogate_loss(logp, logp_old, adv, clip_eps_low=0.2)
    loss.backward()
    assert math.isclose(loss.item(), -(2.4 - 3.0) / 2, rel_tol=1e-6)
    assert torch.allclose(logp.grad, T_([0.0, 1.5]))
    assert stats["clipfrac_high"].item() == 0.5  # the A>0 token sits above 1+eps
    assert stats["clipfrac_low"].item() == 0.0
    assert stats["clipfrac"].item() == 0.5


def test_clip_higher_widens_only_the_upper_side():
    # ratio 1.25, A = 1: symmetric eps 0.2 clips to 1.2; eps_high 0.28 leaves 1.25.
    logp = torch.full((1,), math.log(1.25))
    adv = T_([1.0])
    sym, _ = clipped_surrogate_loss(logp, torch.zeros(1), adv, clip_eps_low=0.2)
    high, _ = clipped_surrogate_loss(logp, torch.zeros(1), adv, clip_eps_low=0.2, clip_eps_high=0.28)
    assert math.isclose(sym.item(), -1.2, rel_tol=1e-6)
    assert math.isclose(high.item(), -1.25, rel_tol=1e-6)
    # ratio 0.75 with A = -1: eps_low 0.2 clips at 0.8 -> min(-0.75, -0.8) = -0.8, whatever eps_high.
    low, st_ = clipped_surrogate_loss(
        torch.full((1,), math.log(0.75)), torch.zeros(1), -adv, clip_eps_low=0.2, clip_eps_high=0.28
    )
    assert math.isclose(low.item(), 0.8, rel_tol=1e-6)
    assert st_["clipfrac_low"].item() == 1.0


def test_dual_clip_bounds_negative_advantage_objective():
    # A = -1, ratio = 5, c = 3: L^CLIP = min(-5, -1.2) = -5; dual clip max(-5, 3*-1) = -3: loss 3, no gradient.
    logp = torch.full((1,), math.log(5.0), requires_grad=True)
    loss, stats = clipped_surrogate_loss(logp, torch.zeros(1), T_([-1.0]), clip_eps_low=0.2, dual_clip=3.0)
    loss.backward()
    assert math.isclose(loss.item(), 3.0, rel_tol=1e-6)
    assert logp.grad.item() == 0.0
    assert stats["clipfrac_dual"].item() == 1.0
    # Positive advantages are untouched by the dual clip.
    loss_pos, _ = clipped_surrogate_loss(logp.detach(), torch.zeros(1), T_([1.0]), clip_eps_low=0.2, dual_clip=3.0)
    assert math.isclose(loss_pos.item(), -1.2, rel_tol=1e-6)


def test_approx_kl_is_k3_of_the_ratio():
    # log r = log 2: (r - 1) - log r = 1 - 0.693147...
    logp = torch.full((1,), math.log(2.0))
    _, stats = clipped_surrogate_loss(logp, torch.zeros(1), T_([1.0]))
    assert math.isclose(stats["approx_kl"].item(), 1 - math.log(2), rel_tol=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=1, max_size=8), st.floats(0.05, 0.5), st.floats(0.0, 0.5))
def test_at_ratio_one_clip_gradient_equals_policy_gradient(advs, eps_low, extra_high):
    # With logp == logp_old the ratio is 1, inside every clip range: both losses have gradient -A/N.
    adv = torch.tensor(advs, dtype=torch.float64)
    base = torch.linspace(-2, -0.1, len(advs), dtype=torch.float64)
    a = base.clone().requires_grad_(True)
    b = base.clone().requires_grad_(True)
    clip, _ = clipped_surrogate_loss(
        a, base.clone(), adv, clip_eps_low=eps_low, clip_eps_high=eps_low + extra_high, dual_clip=3.0
    )
    pg, _ = policy_gradient_loss(b, adv)
    clip.backward()
    pg.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-12)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(-3, 3), st.floats(-2, 2)), min_size=1, max_size=8), st.floats(0.05, 0.4))
def test_clipped_tokens_carry_zero_gradient(pairs, eps):
    # A token whose ratio is outside the range on the side its advantage pushes has zero gradient;
    # every other token has gradient -r*A/N exactly.
    adv = torch.tensor([p[0] for p in pairs], dtype=torch.float64)
    log_ratio = torch.tensor([p[1] for p in pairs], dtype=torch.float64)
    logp = log_ratio.clone().requires_grad_(True)
    loss, _ = clipped_surrogate_loss(logp, torch.zeros_like(log_ratio), adv, clip_eps_low=eps)
    loss.backward()
    r = log_ratio.exp()
    clipped = ((r > 1 + eps) & (adv > 0)) | ((r < 1 - eps) & (adv < 0))
    expected = torch.where(clipped, torch.zeros_like(r), -r * adv / len(pairs))
    assert torch.allclose(logp.grad, expected, atol=1e-12)


def test_kl_penalty_surrogate_by_hand():
    # ratio 1, A = 2, KL = 0.5, beta = 0.1: objective 2 - 0.05 = 1.95; d/dkl of loss = +beta.
    kl = T_([0.5], requires_grad=True)
    loss, stats = kl_penalty_surrogate_loss(torch.zeros(1), torch.zeros(1), T_([2.0]), kl, kl_coef=0.1)
    loss.backward()
    assert math.isclose(loss.item(), -1.95, rel_tol=1e-6)
    assert math.isclose(kl.grad.item(), 0.1, rel_tol=1e-6)
    assert stats["kl"].item() == 0.5


def test_value_loss_unclipped_and_clipped():
    # Unclipped: 0.5 * mean((V - G)^2) = 0.5 * mean([1, 1]) = 0.5
    v = T_([1.0, 3.0])
    loss, _ = value_loss(v, T_([2.0, 2.0]))
    assert loss.item() == 0.5
    # Clipped: V = 2.2, V_old = 0, G = 2, eps = 0.5 -> V_clip = 0.5; max(0.04, 2.25) = 2.25 -> loss 1.125,
    # and the clipped branch is constant in V: zero gradient.
    v = T_([2.2], requires_grad=True)
    loss, stats = value_loss(v, T_([2.0]), values_old=T_([0.0]), clip_eps=0.5)
    loss.backward()
    assert math.isclose(loss.item(), 1.125, rel_tol=1e-6)
    assert v.grad.item() == 0.0
    assert stats["value_clipfrac"].item() == 1.0


def test_entropy_loss_is_negative_mean_entropy_with_mask():
    ent = T_([[1.0, 2.0, 9.0]])
    mask = T_([[True, True, False]])
    loss, stats = entropy_loss(ent, mask)
    assert loss.item() == -1.5
    assert stats["entropy"].item() == 1.5
