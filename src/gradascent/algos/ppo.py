"""PPO for classic control: the clipped surrogate (PPO-Clip) or the adaptive KL penalty (PPO-Penalty).

Schulman et al. 2017, "Proximal Policy Optimization Algorithms", arXiv:1707.06347: L^CLIP (eq. 7 of the
paper, eq. 10 of docs/equations.md) or L^KLPEN (paper eq. 8, our eq. 12) with beta adapted after each update
(paper sec. 4, our eq. 17). Advantages by GAE (Schulman et al. 2015; eq. 5). The loop follows CleanRL's
ppo.py and ppo_continuous_action.py.

Deliberate deviations and choices:
- One trainer for both losses (``loss``); PPO-Penalty's KL(pi_old || pi) is exact
  (torch.distributions.kl_divergence from the stored parameters of pi_old), and beta is adapted once per
  update from the batch-mean KL of the final policy, with threshold ``kl_threshold`` (ours 2, the paper 1.5)
  and factor 2.
- ``target_kl`` (PPO-Clip early stop, as in SB3) checks the minibatch's approx_kl before its step and ends
  the update's epochs when it exceeds the target.
- Advantages are whitened per minibatch (``norm_adv``); the value loss is unclipped unless ``vf_clip_eps``.
- The environments are reseeded every ``save_every`` updates (exact resume, see algos/classic.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.distributions import kl_divergence

from gradascent.algos.classic import ClassicConfig, ClassicRun, mean_stats
from gradascent.core import (
    adaptive_kl_coef,
    clipped_surrogate_loss,
    entropy_loss,
    explained_variance,
    gae,
    kl_penalty_surrogate_loss,
    value_loss,
    whiten,
)
from gradascent.run.config import check_config, require


@dataclass(frozen=True)
class PPOConfig(ClassicConfig):
    """PPO-Clip and PPO-Penalty. Defaults: CleanRL's CartPole settings."""

    ent_coef: float = 0.01
    loss: Literal["clip", "kl_penalty"] = "clip"
    """Policy loss: the clipped surrogate (eq. 10) or the KL-penalised surrogate with adaptive beta (eq. 12)."""
    num_steps: int = 128
    """Steps per copy per update (T); a batch is num_envs * num_steps transitions."""
    update_epochs: int = 4
    """Passes over each batch (K in the PPO paper)."""
    num_minibatches: int = 4
    """Minibatches per epoch: a divisor of the batch num_envs * num_steps, and with norm_adv at most half of it
    (a minibatch of one sample whitens its advantage to 0). They split the batch's transitions (the autoreset
    steps left out) into sizes within one of each other, fewer where one would hold a single sample."""
    lam: float = 0.95
    """GAE lambda (eq. 5): 0 one-step TD, 1 Monte Carlo."""
    clip_eps: float = 0.2
    """Clip range epsilon of L^CLIP, in (0, 1); 0.2 in the paper."""
    vf_clip_eps: float | None = None
    """Clip range of the value loss (eq. 13), or null for the plain squared error."""
    norm_adv: bool = True
    """Whiten advantages per minibatch."""
    target_kl: float | None = None
    """PPO-Clip: end the update's epochs once a minibatch's approx_kl exceeds this (e.g. 0.015); null: off
    (PPO-Penalty refuses it: beta steers the KL there)."""
    kl_coef: float = 1.0
    """PPO-Penalty: initial beta, > 0; the paper reports results insensitive to it since it adapts quickly."""
    kl_target: float = 0.01
    """PPO-Penalty: d_targ, the KL per update that beta steers towards (paper: 0.003 to 0.03)."""
    kl_threshold: float = 2.0
    """PPO-Penalty: beta halves below kl_target / kl_threshold and doubles above kl_target * kl_threshold
    (eq. 17); ours 2, the PPO paper 1.5."""

    def __post_init__(self) -> None:
        super().__post_init__()
        require(self.num_steps >= 1, "num_steps", self.num_steps, "an integer >= 1")
        require(self.update_epochs >= 1, "update_epochs", self.update_epochs, "an integer >= 1")
        batch = self.num_envs * self.num_steps
        require(not self.norm_adv or batch >= 2, "num_steps", self.num_steps,
                f"at least 2 transitions a batch with norm_adv (num_envs * num_steps = {batch}: one sample, whose "
                "whitened advantage is 0, so the policy never learns); raise num_envs or num_steps, or set "
                "norm_adv false")
        require(1 <= self.num_minibatches <= batch and batch % self.num_minibatches == 0, "num_minibatches",
                self.num_minibatches, f"a divisor of the batch num_envs * num_steps = {batch} (equal minibatches)")
        require(not self.norm_adv or batch // self.num_minibatches >= 2, "num_minibatches", self.num_minibatches,
                f"at most {batch // 2} with norm_adv (minibatches of one sample whiten every advantage to 0, so the "
                "policy never learns); or set norm_adv false")
        require(0.0 <= self.lam <= 1.0, "lam", self.lam, "in [0, 1]")
        require(0.0 < self.clip_eps < 1.0, "clip_eps", self.clip_eps, "in (0, 1)")
        require(self.vf_clip_eps is None or self.vf_clip_eps > 0, "vf_clip_eps", self.vf_clip_eps,
                "a float > 0 or null")
        require(self.target_kl is None or self.target_kl > 0, "target_kl", self.target_kl, "a float > 0 or null")
        # target_kl stops the epochs early, PPO-Clip's guard; under the penalty a stopped update also reads
        # as a small KL, so beta would halve on every update
        require(self.target_kl is None or self.loss == "clip", "target_kl", self.target_kl,
                "null with loss kl_penalty (PPO-Penalty steers the KL by beta; target_kl is PPO-Clip's early stop)")
        require(self.kl_coef > 0 if self.loss == "kl_penalty" else self.kl_coef >= 0, "kl_coef", self.kl_coef,
                "a float > 0 with loss kl_penalty (beta adapts by halving and doubling: from 0 it stays 0)"
                if self.loss == "kl_penalty" else "a float >= 0")
        require(self.kl_target > 0, "kl_target", self.kl_target, "a float > 0")
        require(self.kl_threshold > 1, "kl_threshold", self.kl_threshold, "a float > 1 (the paper: 1.5)")


def minibatches(n: int, num: int, min_size: int = 1) -> tuple[torch.Tensor, ...]:
    """A random partition of the indices 0..n-1 into ``num`` minibatches whose sizes differ by at most one, or
    into fewer where ``num`` would make one smaller than ``min_size`` (2 when advantages are whitened per
    minibatch: one sample whitens to 0). ``n``, the transitions left after the autoreset steps are dropped,
    is often not a multiple of ``num``; none when n == 0."""
    if n == 0:
        return ()
    return torch.randperm(n).tensor_split(max(1, min(num, n // min_size)))


def train(cfg: PPOConfig, out: str | Path | None = None, *, resume: bool = False,
          progress: bool | None = None) -> dict[str, Any]:
    """Train PPO on ``cfg.env``; writes the run directory ``out`` and returns the summary."""
    check_config(cfg, PPOConfig, "ppo.train")
    algo = "ppo" if cfg.loss == "clip" else "ppo-penalty"
    with ClassicRun(cfg, algo, out, resume=resume, progress=progress) as run:
        policy, collector = run.policy, run.collector
        kl_coef = run.algo_state.get("kl_coef", cfg.kl_coef)  # beta, carried across updates
        while not run.done:
            if run.update % cfg.save_every == 0:
                collector.reset(seed=run.env_seed())
            run.scheduled_lr()

            # 1. Collect num_envs x num_steps transitions with pi_old.
            batch = collector.collect(policy, cfg.num_steps)

            # 2. Advantages by GAE (eq. 5); returns = adv + V are the critic's targets.
            adv, returns = gae(batch.rewards, batch.values, batch.next_values, cfg.gamma, cfg.lam,
                               batch.terminated, batch.truncated)
            m = batch.mask  # drop the autoreset transitions, flatten (B, T) -> (N,)
            obs, actions, params_old = batch.obs[m], batch.actions[m], batch.dist_params[m]
            logp_old, values_old, adv, returns = batch.logp[m], batch.values[m], adv[m], returns[m]

            # 3. Epochs of minibatches.
            n = len(adv)
            stats: list[dict[str, torch.Tensor]] = []
            stop = False
            for epoch in range(cfg.update_epochs):
                for idx in minibatches(n, cfg.num_minibatches, min_size=2 if cfg.norm_adv else 1):
                    params, values = policy(obs[idx])
                    dist = policy.distribution(params)
                    logp = dist.log_prob(actions[idx])
                    mb_adv = whiten(adv[idx]) if cfg.norm_adv else adv[idx]
                    if cfg.loss == "clip":
                        pg_loss, pg_stats = clipped_surrogate_loss(logp, logp_old[idx], mb_adv,
                                                                   clip_eps_low=cfg.clip_eps)
                    else:
                        kl = kl_divergence(policy.distribution(params_old[idx]), dist)  # KL(pi_old || pi)
                        pg_loss, pg_stats = kl_penalty_surrogate_loss(logp, logp_old[idx], mb_adv, kl, kl_coef)
                    v_loss, v_stats = value_loss(values, returns[idx], values_old[idx], clip_eps=cfg.vf_clip_eps)
                    ent_loss, ent_stats = entropy_loss(dist.entropy())
                    loss = pg_loss + cfg.vf_coef * v_loss + cfg.ent_coef * ent_loss
                    if cfg.target_kl is not None and float(pg_stats["approx_kl"]) > cfg.target_kl:
                        stop = True
                        break
                    grad_norm = run.optimize(loss)
                    stats.append({"policy_loss": pg_loss.detach(), **pg_stats, **v_stats, **ent_stats,
                                  **({"grad_norm": grad_norm} if grad_norm is not None else {})})
                if stop:
                    break

            # 4. PPO-Penalty: adapt beta from the batch-mean KL of the updated policy (eq. 17).
            metrics = mean_stats(stats) if stats else {}
            if cfg.loss == "kl_penalty":
                with torch.no_grad():
                    batch_kl = kl_divergence(policy.distribution(params_old),
                                             policy.distribution(policy.dist_params(obs))).mean()
                metrics["kl"], metrics["kl_coef"] = float(batch_kl), kl_coef
                kl_coef = adaptive_kl_coef(kl_coef, float(batch_kl), cfg.kl_target, threshold=cfg.kl_threshold)
            metrics["explained_variance"] = float(explained_variance(values_old, returns))
            metrics["epochs_done"] = epoch + 1 - int(stop)  # fewer than update_epochs after a target_kl stop
            run.end_update(batch, metrics, algo_state={"kl_coef": kl_coef})
        return run.finish()
