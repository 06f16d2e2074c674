"""Returns, n-step returns and GAE against hand-computed values and their defining identities."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gradascent.core import discounted_returns, gae, nstep_returns

T_ = torch.tensor


def test_discounted_returns_single_episode_by_hand():
    # r = [1, 2, 3], gamma = 0.5, episode terminates after the last step:
    # G_2 = 3; G_1 = 2 + 0.5*3 = 3.5; G_0 = 1 + 0.5*3.5 = 2.75
    r = T_([[1.0, 2.0, 3.0]])
    term = T_([[False, False, True]])
    G = discounted_returns(r, 0.5, terminated=term)
    assert torch.equal(G, T_([[2.75, 3.5, 3.0]]))


def test_discounted_returns_resets_at_termination_and_bootstraps_at_truncation():
    # Two episodes in one row of 4 steps, gamma = 0.9, all rewards 1.
    # Step 1 is truncated with V(final obs) = 10, step 3 is the end of the rollout with V(s_4) = 5.
    # G_1 = 1 + 0.9*10 = 10;  G_0 = 1 + 0.9*G_1 = 10
    # G_3 = 1 + 0.9*5 = 5.5;  G_2 = 1 + 0.9*5.5 = 5.95
    r = torch.ones(1, 4)
    trunc = T_([[False, True, False, False]])
    nv = T_([[99.0, 10.0, 99.0, 5.0]])  # 99 is V(s_{t+1}) inside an episode: unused by Monte Carlo
    G = discounted_returns(r, 0.9, truncated=trunc, next_values=nv)
    assert torch.allclose(G, T_([[10.0, 10.0, 5.95, 5.5]]), atol=1e-6)
    # Had step 1 terminated instead, nothing would be bootstrapped there: G_1 = 1, G_0 = 1.9.
    G = discounted_returns(r, 0.9, terminated=trunc, next_values=nv)
    assert torch.allclose(G, T_([[1.9, 1.0, 5.95, 5.5]]), atol=1e-6)


def test_nstep_returns_by_hand():
    # r = [1, 1, 1, 1], gamma = 0.5, n = 2, V(s_{t+1}) = [2, 4, 6, 8], no boundary.
    # G_0 = 1 + 0.5*1 + 0.25*V(s_2) = 1.5 + 0.25*4 = 2.5
    # G_1 = 1.5 + 0.25*V(s_3) = 1.5 + 1.5 = 3.0
    # G_2 = 1.5 + 0.25*V(s_4) = 1.5 + 2 = 3.5
    # G_3 = 1 + 0.5*V(s_4) = 1 + 4 = 5   (rollout ends after one step: a 1-step return)
    r = torch.ones(1, 4)
    nv = T_([[2.0, 4.0, 6.0, 8.0]])
    G = nstep_returns(r, nv, 0.5, n=2)
    assert torch.allclose(G, T_([[2.5, 3.0, 3.5, 5.0]]))


def test_nstep_returns_stop_at_boundaries():
    # Same as above but step 0 terminates and step 2 is truncated (V(final obs) = 6).
    # G_0 = 1 (terminal, no bootstrap);  G_1 = 1 + 0.5*1 + 0.25*6 = 3.0 (the window closes at the cut)
    # G_2 = 1 + 0.5*6 = 4;  G_3 = 1 + 0.5*8 = 5
    r = torch.ones(1, 4)
    nv = T_([[2.0, 4.0, 6.0, 8.0]])
    term = T_([[True, False, False, False]])
    trunc = T_([[False, False, True, False]])
    G = nstep_returns(r, nv, 0.5, n=2, terminated=term, truncated=trunc)
    assert torch.allclose(G, T_([[1.0, 3.0, 4.0, 5.0]]))


def test_gae_by_hand():
    # r = [1, 0], V = [0.5, 1], V(s_1) = 1, V(s_2) = 2, gamma = 0.5, lam = 0.5, no boundary.
    # delta_1 = 0 + 0.5*2 - 1 = 0;  delta_0 = 1 + 0.5*1 - 0.5 = 1
    # A_1 = 0;  A_0 = 1 + 0.25*0 = 1;  returns = A + V = [1.5, 1]
    r = T_([[1.0, 0.0]])
    v = T_([[0.5, 1.0]])
    nv = T_([[1.0, 2.0]])
    adv, ret = gae(r, v, nv, gamma=0.5, lam=0.5)
    assert torch.equal(adv, T_([[1.0, 0.0]]))
    assert torch.equal(ret, T_([[1.5, 1.0]]))


def test_gae_truncation_bootstraps_from_final_observation_and_termination_does_not():
    # One step that ends an episode: r = 1, V(s_0) = 0, V(final obs) = 3, gamma = 1.
    r, v, nv = T_([[1.0]]), T_([[0.0]]), T_([[3.0]])
    flag = T_([[True]])
    adv_trunc, _ = gae(r, v, nv, 1.0, 0.95, truncated=flag)
    adv_term, _ = gae(r, v, nv, 1.0, 0.95, terminated=flag)
    assert adv_trunc.item() == 4.0  # 1 + 3 - 0
    assert adv_term.item() == 1.0  # 1 + 0 - 0


episodes = st.integers(min_value=1, max_value=3).flatmap(
    lambda B: st.integers(min_value=1, max_value=12).flatmap(
        lambda T: st.tuples(
            st.lists(st.floats(-5, 5, allow_nan=False), min_size=B * T, max_size=B * T),
            st.lists(st.floats(-5, 5, allow_nan=False), min_size=B * T, max_size=B * T),
            st.lists(st.floats(-5, 5, allow_nan=False), min_size=B * T, max_size=B * T),
            st.lists(st.sampled_from([0, 0, 0, 1, 2]), min_size=B * T, max_size=B * T),
            st.just((B, T)),
        )
    )
)


def _unpack(sample):
    r, v, nv, flags, shape = sample
    r = torch.tensor(r, dtype=torch.float64).reshape(shape)
    v = torch.tensor(v, dtype=torch.float64).reshape(shape)
    nv = torch.tensor(nv, dtype=torch.float64).reshape(shape)
    flags = torch.tensor(flags).reshape(shape)
    term, trunc = flags == 1, flags == 2
    # Inside an episode the next state's value is the next step's value: V(s_{t+1}) = values[t+1].
    # Only at a boundary (or the rollout's end) does next_values carry information of its own.
    nv[:, :-1] = torch.where(term[:, :-1] | trunc[:, :-1], nv[:, :-1], v[:, 1:])
    return r, v, nv, term, trunc


@settings(max_examples=200, deadline=None)
@given(episodes, st.floats(0.0, 1.0))
def test_gae_lambda_one_is_monte_carlo_return_minus_values(sample, gamma):
    r, v, nv, term, trunc = _unpack(sample)
    adv, _ = gae(r, v, nv, gamma, 1.0, terminated=term, truncated=trunc)
    G = discounted_returns(r, gamma, terminated=term, truncated=trunc, next_values=nv)
    assert torch.allclose(adv, G - v, atol=1e-9)


@settings(max_examples=200, deadline=None)
@given(episodes, st.floats(0.0, 1.0))
def test_gae_lambda_zero_is_td_error(sample, gamma):
    r, v, nv, term, trunc = _unpack(sample)
    adv, _ = gae(r, v, nv, gamma, 0.0, terminated=term, truncated=trunc)
    td = r + gamma * (~term).double() * nv - v
    assert torch.allclose(adv, td, atol=1e-12)


def _nstep_by_definition(r, nv, gamma, n, term, trunc):
    """G_t^(n) element by element: rewards of the window, which closes after n steps, at an episode boundary or
    at the rollout's end; then gamma^k V(s_{t+k}) unless the last step terminated."""
    B, T = r.shape
    out = torch.zeros_like(r)
    for b in range(B):
        for t in range(T):
            g, disc = 0.0, 1.0
            for k in range(t, T):
                g += disc * float(r[b, k])
                disc *= gamma
                if term[b, k]:
                    break
                if trunc[b, k] or k == T - 1 or k - t + 1 == n:
                    g += disc * float(nv[b, k])
                    break
            out[b, t] = g
    return out


@settings(max_examples=200, deadline=None)
@given(episodes, st.floats(0.0, 1.0))
def test_nstep_with_long_window_is_bootstrapped_return_and_n1_is_td_target(sample, gamma):
    r, v, nv, term, trunc = _unpack(sample)
    T = r.shape[-1]
    for n in (1, 2, T - 1, T, T + 3):
        if n >= 1:
            G = nstep_returns(r, nv, gamma, n=n, terminated=term, truncated=trunc)
            assert torch.allclose(G, _nstep_by_definition(r, nv, gamma, n, term, trunc), atol=1e-9), n
    long = nstep_returns(r, nv, gamma, n=T + 3, terminated=term, truncated=trunc)
    G = discounted_returns(r, gamma, terminated=term, truncated=trunc, next_values=nv)
    assert torch.allclose(long, G, atol=1e-9)
    one = nstep_returns(r, nv, gamma, n=1, terminated=term, truncated=trunc)
    assert torch.allclose(one, r + gamma * (~term).double() * nv, atol=1e-12)