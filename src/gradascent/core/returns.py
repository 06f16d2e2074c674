"""Returns and advantages over time: discounted returns, n-step bootstrapped returns, GAE.

Sources: Williams 1992 (REINFORCE, Monte-Carlo return), Sutton & Barto ch. 7 (n-step returns, used by A2C,
Mnih et al. 2016), Schulman et al. 2015 (GAE, arXiv:1506.02438).

Layout: every tensor is (B, T), batch first, time last. Step t holds reward r_t received after action a_t in
state s_t. Episode boundaries come as two bool tensors:

- ``terminated[b, t]``: s_{t+1} is terminal; nothing follows, its value is 0.
- ``truncated[b, t]``: the episode was cut after step t (time limit) although s_{t+1} is not terminal; the
  return continues beyond the cut in expectation, so it is bootstrapped from V(s_{t+1}).

``next_values[b, t]`` = V(s_{t+1}) for the *true* next state: at a truncation the final observation of the
cut episode (not the first observation of the next one), and at the last step of the rollout the value of
the state where collection stopped. It is ignored where ``terminated`` (selected away, so even a NaN there
does not reach the result), and so is everything after a boundary. Integer or bool rewards are taken as
float32; a rollout of T = 0 steps gives an empty result.

Deviation from the reference essay: the bootstrap term of the n-step return is gamma^n V(s_{t+n}) (the essay
writes gamma^{n-1}).
"""

from __future__ import annotations

import torch
from torch import Tensor


def as_float(rewards: Tensor) -> Tensor:
    """Integer or bool rewards (e.g. a 0/1 exact match) as float32; float tensors as they are."""
    return rewards if rewards.is_floating_point() else rewards.float()


def _check_rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be in [0, 1], got {value}")


def _flags(rewards: Tensor, flag: Tensor | None) -> Tensor:
    if flag is None:
        return torch.zeros_like(rewards, dtype=torch.bool)
    if flag.shape != rewards.shape:
        raise ValueError(f"episode flags of shape {tuple(flag.shape)} do not match rewards {tuple(rewards.shape)}")
    return flag.bool()


def _next_values(rewards: Tensor, next_values: Tensor | None) -> Tensor:
    if next_values is None:
        return torch.zeros_like(rewards)
    if next_values.shape != rewards.shape:
        raise ValueError(f"next_values shape {tuple(next_values.shape)} does not match rewards {tuple(rewards.shape)}")
    return next_values.to(rewards.dtype)


def discounted_returns(
    rewards: Tensor,
    gamma: float,
    terminated: Tensor | None = None,
    truncated: Tensor | None = None,
    next_values: Tensor | None = None,
) -> Tensor:
    """Discounted return-to-go G_t = sum_k gamma^k r_{t+k}, cut at episode boundaries (eq. 1).

    G_t = r_t + gamma * (1 - terminated_t) * (V(s_{t+1}) if truncated_t or t = T-1 else G_{t+1}).
    With ``next_values=None`` nothing is bootstrapped (pure Monte Carlo: a cut or an unfinished episode
    counts as if it had ended).

    Args:
        rewards: (B, T) float.
        gamma: discount factor in [0, 1].
        terminated, truncated: (B, T) bool, or None for "no boundary inside the rollout".
        next_values: (B, T) V(s_{t+1}) of the true next state, or None.

    Returns:
        (B, T) returns, same dtype as ``rewards``.
    """
    _check_rate("gamma", gamma)
    rewards = as_float(rewards)
    term = _flags(rewards, terminated)
    trunc = _flags(rewards, truncated)
    nv = _next_values(rewards, next_values)
    T = rewards.shape[-1]
    out = torch.empty_like(rewards)
    if T == 0:
        return out
    zero = torch.zeros_like(rewards[..., 0])
    running = nv[..., T - 1]  # bootstrap at the end of the rollout
    for t in range(T - 1, -1, -1):
        cont = torch.where(trunc[..., t], nv[..., t], running) if t < T - 1 else running
        running = rewards[..., t] + torch.where(term[..., t], zero, gamma * cont)
        out[..., t] = running
    return out


def nstep_returns(
    rewards: Tensor,
    next_values: Tensor,
    gamma: float,
    n: int,
    terminated: Tensor | None = None,
    truncated: Tensor | None = None,
) -> Tensor:
    """n-step bootstrapped return G_t^(n) = sum_{k=0}^{n-1} gamma^k r_{t+k} + gamma^n V(s_{t+n}).

    The window stops early at an episode boundary (terminated: no bootstrap; truncated: bootstrap from the
    final observation's value) and at the end of the rollout (bootstrap from ``next_values[:, T-1]``). In
    general, with e the last step of the window: G_t = sum_{k=t}^{e} gamma^{k-t} r_k
    + gamma^{e-t+1} (1 - terminated_e) V(s_{e+1}). With n >= T this is the A2C return of Mnih et al. 2016.

    Args:
        rewards: (B, T).
        next_values: (B, T) V(s_{t+1}) of the true next state.
        gamma: discount factor.
        n: window length, >= 1.
        terminated, truncated: (B, T) bool or None.

    Returns:
        (B, T) n-step returns.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _check_rate("gamma", gamma)
    rewards = as_float(rewards)
    if n >= rewards.shape[-1]:  # every window reaches a boundary or the rollout's end: the bootstrapped return
        return discounted_returns(rewards, gamma, terminated, truncated, next_values)
    term = _flags(rewards, terminated)
    done = term | _flags(rewards, truncated)
    nv = _next_values(rewards, next_values)
    T = rewards.shape[-1]
    out = torch.zeros_like(rewards)
    alive = torch.ones_like(rewards, dtype=torch.bool)  # window of G_t still open at offset k
    discount = 1.0
    for k in range(min(n, T)):
        # Step t+k, for every t whose window reaches it (t + k < T).
        r = rewards[..., k:]
        a = alive[..., : T - k]
        out[..., : T - k] += torch.where(a, discount * r, torch.zeros_like(r))
        d = done[..., k:]
        last = (k == n - 1) | d  # the window closes after this step...
        last = last.clone()
        last[..., -1] = True  # ...or at the end of the rollout
        boot = discount * gamma * nv[..., k:]
        closing = a & last & ~term[..., k:]
        out[..., : T - k] += torch.where(closing, boot, torch.zeros_like(boot))
        alive[..., : T - k] = a & ~last
        discount *= gamma
    return out


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    gamma: float,
    lam: float,
    terminated: Tensor | None = None,
    truncated: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2015, eq. 16).

    delta_t = r_t + gamma * (1 - terminated_t) * V(s_{t+1}) - V(s_t)
    A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1},   done = terminated | truncated

    lam = 1 gives Monte-Carlo returns minus values; lam = 0 gives the one-step TD errors.

    Args:
        rewards, values, next_values: (B, T).
        gamma, lam: discount and GAE parameter, both in [0, 1].
        terminated, truncated: (B, T) bool or None.

    Returns:
        (advantages, returns), both (B, T); returns = advantages + values (the critic's target).
    """
    _check_rate("gamma", gamma)
    _check_rate("lam", lam)
    rewards = as_float(rewards)
    term = _flags(rewards, terminated)
    done = term | _flags(rewards, truncated)
    nv = _next_values(rewards, next_values)
    if values.shape != rewards.shape:
        raise ValueError(f"values shape {tuple(values.shape)} does not match rewards {tuple(rewards.shape)}")
    values = values.to(rewards.dtype)
    deltas = rewards + torch.where(term, torch.zeros_like(nv), gamma * nv) - values
    adv = torch.empty_like(rewards)
    zero = torch.zeros_like(rewards[..., :1].squeeze(-1))
    running = zero
    for t in range(rewards.shape[-1] - 1, -1, -1):
        running = deltas[..., t] + torch.where(done[..., t], zero, gamma * lam * running)
        adv[..., t] = running
    return adv, adv + values
