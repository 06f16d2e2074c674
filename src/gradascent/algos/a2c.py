"""A2C: synchronous advantage actor-critic for classic control.

Mnih et al. 2016, "Asynchronous Methods for Deep Reinforcement Learning", arXiv:1602.01783, in its
synchronous form (one gradient step per rollout of num_envs x num_steps transitions, as in OpenAI baselines
and SB3). Critic targets are n-step bootstrapped returns (eq. 3) with A_t = G_t^(n) - V(s_t) (eq. 4), or GAE
(eq. 5); the loss is L^PG (eq. 2) + vf_coef L^V (eq. 13, unclipped) - ent_coef H (eq. 14).

Deliberate deviations and choices:
- ``n_step=null`` uses the longest window the rollout allows, as Mnih et al. do: the first step of a rollout
  gets a num_steps-step return, the last a one-step one. A fixed ``n_step`` smaller than num_steps gives
  every step the same horizon.
- The critic is a separate network unless ``shared_network``; the default optimizer is RMSprop as in the
  paper (SB3 default), with epsilon 1e-5.
- The environments are reseeded every ``save_every`` updates (exact resume, see algos/classic.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from gradascent.algos.classic import ClassicConfig, ClassicRun
from gradascent.core import (
    advantages_from_returns,
    entropy_loss,
    explained_variance,
    gae,
    nstep_returns,
    policy_gradient_loss,
    value_loss,
    whiten,
)
from gradascent.run.config import check_config, require


@dataclass(frozen=True)
class A2CConfig(ClassicConfig):
    """A2C. Defaults: SB3's A2C (itself the baselines' settings)."""

    num_envs: int = 8
    lr: float = 7e-4
    optimizer: Literal["adam", "rmsprop"] = "rmsprop"
    save_every: int = 500  # the environments are reseeded there too: keep save_every * num_steps >> episodes
    num_steps: int = 5
    """Steps per copy per update (t_max of Mnih et al. 2016); a batch is num_envs * num_steps transitions."""
    advantage: Literal["nstep", "gae"] = "nstep"
    """Critic target and advantage: n-step returns (eq. 3, 4) or GAE (eq. 5)."""
    n_step: int | None = None
    """Window n of the n-step return; null: up to the end of the rollout (Mnih et al.)."""
    lam: float = 1.0
    """GAE lambda when advantage = gae (SB3 A2C: 1.0)."""
    norm_adv: bool = False
    """Whiten the advantages of each batch (off in SB3's A2C)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.num_steps >= 1, "num_steps", self.num_steps, "an integer >= 1")
        require(self.n_step is None or self.n_step >= 1, "n_step", self.n_step, "an integer >= 1 or null")
        require(self.n_step is None or self.advantage == "nstep", "n_step", self.n_step,
                "null with advantage gae (GAE weighs every n by lambda; n_step would be ignored)")
        require(0.0 <= self.lam <= 1.0, "lam", self.lam, "in [0, 1]")


def train(cfg: A2CConfig, out: str | Path | None = None, *, resume: bool = False,
          progress: bool | None = None) -> dict[str, Any]:
    """Train A2C on ``cfg.env``; writes the run directory ``out`` and returns the summary."""
    check_config(cfg, A2CConfig, "a2c.train")
    with ClassicRun(cfg, "a2c", out, resume=resume, progress=progress) as run:
        policy, collector = run.policy, run.collector
        while not run.done:
            if run.update % cfg.save_every == 0:
                collector.reset(seed=run.env_seed())
            run.scheduled_lr()

            # 1. Collect num_envs x num_steps transitions.
            batch = collector.collect(policy, cfg.num_steps)

            # 2. Critic targets and advantages.
            if cfg.advantage == "nstep":
                returns = nstep_returns(batch.rewards, batch.next_values, cfg.gamma, cfg.n_step or cfg.num_steps,
                                        batch.terminated, batch.truncated)
                adv = advantages_from_returns(returns, batch.values)
            else:
                adv, returns = gae(batch.rewards, batch.values, batch.next_values, cfg.gamma, cfg.lam,
                                   batch.terminated, batch.truncated)
            m = batch.mask  # drop the autoreset transitions, flatten (B, T) -> (N,)
            adv, returns = adv[m], returns[m]
            if cfg.norm_adv:
                adv = whiten(adv)

            # 3. One gradient step on the whole batch.
            params, values = policy(batch.obs[m])
            dist = policy.distribution(params)
            pg_loss, pg_stats = policy_gradient_loss(dist.log_prob(batch.actions[m]), adv)
            v_loss, v_stats = value_loss(values, returns)
            ent_loss, ent_stats = entropy_loss(dist.entropy())
            loss = pg_loss + cfg.vf_coef * v_loss + cfg.ent_coef * ent_loss
            grad_norm = run.optimize(loss)

            metrics = {**pg_stats, **v_stats, **ent_stats,
                       "explained_variance": explained_variance(batch.values[m], returns)}
            if grad_norm is not None:
                metrics["grad_norm"] = grad_norm
            run.end_update(batch, metrics)
        return run.finish()
