"""REINFORCE: the Monte-Carlo policy gradient, with return normalisation and an optional learned baseline.

Williams 1992, "Simple statistical gradient-following algorithms for connectionist reinforcement
learning". Each update plays one complete episode in each of the num_envs copies, computes the discounted
return-to-go G_t (eq. 1) and takes one gradient step on L^PG = -E[log pi(a_t|s_t) A_t] (eq. 2), with
A_t = G_t, or G_t - V(s_t) when ``baseline = learned`` (eq. 4; the critic regresses on G_t, eq. 13).

Deliberate deviations and choices:
- ``normalize_returns`` whitens A_t over the batch (a common variance reduction; it is a state-independent
  shift and scale, so the gradient's direction in expectation is unchanged up to a positive factor).
- Pure Monte Carlo: a time-limit truncation ends the return like a termination (no bootstrap), which is
  what REINFORCE on a time-limited task estimates.
- A batch is the first episode of every copy: the environments are reset with a seed derived from
  (seed, update) before each update, copies that finish early keep stepping (their extra transitions are
  simulated, counted in env_steps, and masked out) until the slowest one ends. Taking only the first
  episode of each copy keeps the batch free of the bias towards short episodes that "every episode that
  finished in time" would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gradascent.algos.classic import ClassicConfig, ClassicRun
from gradascent.core import (
    advantages_from_returns,
    discounted_returns,
    entropy_loss,
    explained_variance,
    policy_gradient_loss,
    value_loss,
    whiten,
)
from gradascent.run.config import check_config


@dataclass(frozen=True)
class ReinforceConfig(ClassicConfig):
    """REINFORCE. num_envs is the number of episodes per update."""

    num_envs: int = 8
    lr: float = 1e-3
    baseline: Literal["none", "learned"] = "none"
    """Subtract a learned V(s_t) from the return (the critic is trained on G_t), or no baseline."""
    normalize_returns: bool = True
    """Whiten the returns (or the advantages, with a baseline) over each batch."""


def train(cfg: ReinforceConfig, out: str | Path | None = None, *, resume: bool = False,
          progress: bool | None = None) -> dict[str, Any]:
    """Train REINFORCE on ``cfg.env``; writes the run directory ``out`` and returns the summary."""
    check_config(cfg, ReinforceConfig, "reinforce.train")
    with ClassicRun(cfg, "reinforce", out, resume=resume, progress=progress) as run:
        policy, collector = run.policy, run.collector
        while not run.done:
            run.scheduled_lr()

            # 1. One complete episode per copy, from a reset seeded by (seed, update).
            collector.reset(seed=run.env_seed())
            batch = collector.collect_episodes(policy)

            # 2. Monte-Carlo returns G_t (eq. 1'), no bootstrap; keep each copy's first episode.
            returns = discounted_returns(batch.rewards, cfg.gamma, batch.terminated, batch.truncated)
            m = batch.mask
            returns = returns[m]

            # 3. One gradient step on the batch.
            obs = batch.obs[m]
            dist = policy.distribution(policy.dist_params(obs))
            if cfg.baseline == "learned":
                values = policy.value(obs)
                adv = advantages_from_returns(returns, values.detach())
            else:
                adv = returns
            if cfg.normalize_returns:
                adv = whiten(adv)
            pg_loss, pg_stats = policy_gradient_loss(dist.log_prob(batch.actions[m]), adv)
            ent_loss, ent_stats = entropy_loss(dist.entropy())
            loss = pg_loss + cfg.ent_coef * ent_loss
            metrics: dict[str, Any] = {**pg_stats, **ent_stats}
            if cfg.baseline == "learned":
                v_loss, v_stats = value_loss(values, returns)
                loss = loss + cfg.vf_coef * v_loss
                metrics.update(v_stats, explained_variance=explained_variance(values.detach(), returns))
            grad_norm = run.optimize(loss)
            if grad_norm is not None:
                metrics["grad_norm"] = grad_norm
            run.end_update(batch, metrics)
        return run.finish()
