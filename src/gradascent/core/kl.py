"""KL divergence: sample estimators, the exact categorical KL, and the two KL-coefficient controllers.

Estimators of KL(pi || pi_ref) from log-probs of tokens sampled from pi (Schulman 2020, "Approximating KL
divergence"), with log r = logp_ref - logp:

- k1 = -log r: unbiased, high variance, can be negative per sample.
- k2 = (log r)^2 / 2: biased, low variance, always >= 0.
- k3 = (r - 1) - log r: unbiased, low variance, always >= 0. Pitfall: as a *loss* term its gradient is not
  the gradient of the KL (it is biased; see docs/equations.md), which GRPO accepts.

Controllers: ``adaptive_kl_coef`` is PPO-Penalty's (Schulman et al. 2017, sec. 4); ``proportional_kl_coef``
is the RLHF one (Ziegler et al. 2019, arXiv:1909.08593, sec. 2.2). They are pure functions of floats: the
trainer holds the coefficient and checkpoints it.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k2", "k3"]


def kl_k1(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """k1 = logp - logp_ref per token. Shapes: (...) each."""
    return logp - logp_ref


def kl_k2(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """k2 = (logp - logp_ref)^2 / 2 per token. Shapes: (...) each."""
    return 0.5 * (logp - logp_ref) ** 2


def kl_k3(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """k3 = exp(logp_ref - logp) - (logp_ref - logp) - 1 per token. Shapes: (...) each."""
    log_r = logp_ref - logp
    return torch.expm1(log_r) - log_r


def kl_estimate(logp: Tensor, logp_ref: Tensor, kind: KLEstimator = "k3") -> Tensor:
    """Per-token estimate of KL(pi || pi_ref) by the named estimator. Shapes: (...) each."""
    if kind == "k1":
        return kl_k1(logp, logp_ref)
    if kind == "k2":
        return kl_k2(logp, logp_ref)
    if kind == "k3":
        return kl_k3(logp, logp_ref)
    raise ValueError(f"unknown KL estimator {kind!r}; expected k1, k2 or k3")


def categorical_kl(logits_p: Tensor, logits_q: Tensor) -> Tensor:
    """Exact KL(p || q) = sum_a p(a) (log p(a) - log q(a)) between categoricals given by logits.

    Computed in float32, or float64 for float64 logits. Tokens with p(a) = 0 (logit -inf) add nothing; a
    token with p(a) > 0 and q(a) = 0 makes the KL inf. Shapes: (..., V) each -> (...).
    """
    dtype = torch.promote_types(torch.promote_types(logits_p.dtype, logits_q.dtype), torch.float32)
    logp = torch.log_softmax(logits_p.to(dtype), dim=-1)
    logq = torch.log_softmax(logits_q.to(dtype), dim=-1)
    p = logp.exp()
    counted = p > 0  # 0 * (-inf - log q) would be NaN
    diff = torch.where(counted, logp - logq, torch.zeros_like(logp))
    return (p * diff).sum(-1)


def adaptive_kl_coef(
    kl_coef: float,
    kl: float,
    target: float,
    threshold: float = 2.0,
    factor: float = 2.0,
) -> float:
    """PPO-Penalty's adaptive beta, applied once after each policy update.

    beta / factor if kl < target / threshold;  beta * factor if kl > target * threshold;  else unchanged.
    Default threshold 2 and factor 2 (ours); the PPO paper uses threshold 1.5 and factor 2.
    """
    if target <= 0 or threshold <= 1 or factor <= 1:
        raise ValueError("adaptive KL needs target > 0, threshold > 1, factor > 1")
    _check_finite(kl_coef=kl_coef, kl=kl)
    if kl < target / threshold:
        return kl_coef / factor
    if kl > target * threshold:
        return kl_coef * factor
    return kl_coef


def proportional_kl_coef(
    kl_coef: float,
    kl: float,
    target: float,
    n_steps: int,
    horizon: float,
    clip: float = 0.2,
) -> float:
    """Ziegler et al.'s proportional controller: e = clip(KL/target - 1, -clip, clip);
    beta <- beta * (1 + e * n_steps / horizon), with n_steps the samples of the batch just seen."""
    if target <= 0 or horizon <= 0:
        raise ValueError("proportional KL needs target > 0 and horizon > 0")
    _check_finite(kl_coef=kl_coef, kl=kl)
    err = min(max(kl / target - 1.0, -clip), clip)
    return kl_coef * (1.0 + err * n_steps / horizon)


def _check_finite(**values: float) -> None:
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"the KL controller got {name} = {value}; it needs a finite number")


def kl_penalized_rewards(
    score: Tensor,
    logp: Tensor,
    logp_ref: Tensor,
    mask: Tensor,
    kl_coef: float,
    kind: KLEstimator = "k1",
) -> tuple[Tensor, Tensor]:
    """RLHF per-token reward: r_t = -beta * KL_t for every completion token, plus the sequence score
    (reward model) on its last counted token (Ziegler et al. 2019, eq. 2; Ouyang et al. 2022).

    The KL estimate enters as a value (no gradient flows through the reward).

    Args:
        score: (B,) reward-model scores of the completions.
        logp, logp_ref: (B, T) log-probs of the completion tokens under the sampling policy and the reference.
        mask: (B, T) bool, True on completion tokens (contiguous from the start of each row).
        kl_coef: beta.
        kind: KL estimator of ``kl_estimate`` (k1 as in Ziegler et al.).

    Returns:
        (rewards, kl): both (B, T), zero where ``mask`` is False. A row with no counted token has no last
        token to carry its score: its rewards are all 0.
    """
    if score.shape != logp.shape[:1]:
        raise ValueError(f"score must have shape ({logp.shape[0]},), one per completion, got {tuple(score.shape)}")
    kl = torch.where(mask, kl_estimate(logp.detach(), logp_ref.detach(), kind), torch.zeros_like(logp))
    rewards = -kl_coef * kl
    last = (mask.long().cumsum(-1) == mask.long().sum(-1, keepdim=True)) & mask  # the last counted token
    rewards = rewards + torch.where(last, score.detach().to(rewards.dtype).unsqueeze(-1), torch.zeros_like(rewards))
    return rewards, kl
