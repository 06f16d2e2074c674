"""The derivation itself: grad J(theta) = E[sum_t grad log pi(a_t|s_t) G_t] (eq. 2) on a finite MDP.

A 2-state, 2-action MDP with stochastic transitions, horizon H = 3, tabular softmax policy pi(a|s) =
softmax(theta[s])_a, gamma = 1 (finite horizon, so the reward-to-go estimator is exactly unbiased).
J(theta) = sum_tau P_theta(tau) G_0(tau) is computed by enumerating all (2*2)^3 * 2 = 128 trajectories and
differentiated by autograd: that is the exact gradient. The REINFORCE estimator of one trajectory is the
gradient of -policy_gradient_loss (token sum over the trajectory, returns-to-go from discounted_returns);
its expectation, also by enumeration, must equal the exact gradient to float64 precision.
"""

import itertools

import torch

from gradascent.core import discounted_returns, policy_gradient_loss

H = 3
P0 = torch.tensor([0.6, 0.4], dtype=torch.float64)  # initial state distribution
# P[s, a, s'] transition probabilities; R[s, a] rewards.
P = torch.tensor([[[0.9, 0.1], [0.2, 0.8]], [[0.5, 0.5], [0.3, 0.7]]], dtype=torch.float64)
R = torch.tensor([[1.0, 0.0], [-1.0, 2.0]], dtype=torch.float64)
THETA = torch.tensor([[0.3, -0.2], [0.1, 0.4]], dtype=torch.float64)


def trajectories():
    """Every (states, actions) of length H with its probability factors that do not depend on theta."""
    for states in itertools.product(range(2), repeat=H):
        for actions in itertools.product(range(2), repeat=H):
            env_prob = P0[states[0]]
            for t in range(H - 1):
                env_prob = env_prob * P[states[t], actions[t], states[t + 1]]
            yield states, actions, env_prob


def reinforce_estimate(theta: torch.Tensor, states, actions) -> torch.Tensor:
    """Gradient of -L^PG for one trajectory: sum_t grad log pi(a_t|s_t) G_t."""
    theta = theta.detach().clone().requires_grad_(True)
    s, a = torch.tensor([states]), torch.tensor([actions])
    logp = theta.log_softmax(-1)[s, a]  # (1, H)
    rewards = R[s, a]  # (1, H)
    G = discounted_returns(rewards, gamma=1.0)
    # token sum over the trajectory: seq_mean_token_sum_norm with a divisor of 1, over one sequence
    loss, _ = policy_gradient_loss(logp, G, agg="seq_mean_token_sum_norm", agg_kwargs={"norm_len": 1.0})
    (grad,) = torch.autograd.grad(-loss, theta)
    return grad


def test_expected_reinforce_estimator_equals_exact_gradient():
    theta = THETA.clone().requires_grad_(True)
    logpi = theta.log_softmax(-1)
    J = torch.zeros((), dtype=torch.float64)
    expected = torch.zeros_like(THETA)
    total_prob = 0.0
    for states, actions, env_prob in trajectories():
        pi_prob = torch.stack([logpi[s, a] for s, a in zip(states, actions)]).sum().exp()
        prob = env_prob * pi_prob
        G0 = sum(R[s, a] for s, a in zip(states, actions))
        J = J + prob * G0
        expected += prob.detach() * reinforce_estimate(THETA, states, actions)
        total_prob += prob.item()
    (exact,) = torch.autograd.grad(J, theta)
    assert abs(total_prob - 1.0) < 1e-12  # the enumeration is complete
    assert exact.abs().max() > 0.05  # a gradient worth comparing
    assert torch.allclose(expected, exact, atol=1e-12, rtol=0)


def test_monte_carlo_average_converges_to_exact_gradient():
    # Exact gradient by enumeration, as above.
    theta = THETA.clone().requires_grad_(True)
    logpi = theta.log_softmax(-1)
    J = sum(
        env_prob * torch.stack([logpi[s, a] for s, a in zip(st, ac)]).sum().exp() * sum(R[s, a] for s, a in zip(st, ac))
        for st, ac, env_prob in trajectories()
    )
    (exact,) = torch.autograd.grad(J, theta)

    # Sample K batches of N trajectories; each batch's estimate is the gradient of the batch-mean loss.
    g = torch.Generator().manual_seed(1234)
    K, N = 40, 500
    pi = THETA.softmax(-1)
    estimates = []
    for _ in range(K):
        s = torch.multinomial(P0, N, replacement=True, generator=g)
        states, actions = [], []
        for t in range(H):
            a = torch.multinomial(pi[s], 1, generator=g).squeeze(-1)
            states.append(s)
            actions.append(a)
            s = torch.multinomial(P[s, a], 1, generator=g).squeeze(-1)
        S, A = torch.stack(states, 1), torch.stack(actions, 1)  # (N, H)
        th = THETA.clone().requires_grad_(True)
        logp = th.log_softmax(-1)[S, A]
        G = discounted_returns(R[S, A], gamma=1.0)
        loss, _ = policy_gradient_loss(logp, G, agg="seq_mean_token_sum_norm", agg_kwargs={"norm_len": 1.0})
        (grad,) = torch.autograd.grad(-loss, th)
        estimates.append(grad)
    est = torch.stack(estimates)  # (K, 2, 2)
    mean = est.mean(0)
    stderr = est.std(0) / K**0.5
    # The average lies within 4 standard errors of the exact gradient in every component...
    assert ((mean - exact).abs() <= 4 * stderr).all(), (mean, exact, stderr)
    # ...and those errors are small against the gradient itself (20,000 trajectories).
    assert stderr.max() < 0.05 * exact.abs().max()
    # One batch of 500 is further from the truth than the average of 40 batches.
    assert (est[0] - exact).norm() > (mean - exact).norm()
