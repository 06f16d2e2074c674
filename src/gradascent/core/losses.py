"""Policy and value losses. Each returns ``(loss, stats)``: a scalar to minimise and detached diagnostics.

Losses are the negatives of the objectives we ascend: minimising ``loss`` climbs J.

Sources: Williams 1992 (REINFORCE), Mnih et al. 2016 (A2C), Schulman et al. 2017 (PPO: L^CLIP, eq. 7;
L^KLPEN, eq. 8; clipped value loss from the baselines implementation), Ye et al. 2020 (dual clip,
arXiv:1912.09729), Yu et al. 2025 (DAPO: clip-higher, separate epsilon_low / epsilon_high).

All per-token tensors share one shape: (B, T) with a bool ``mask`` (True counts) for language models, or
flat (N,) with ``mask=None`` for environments. ``agg`` names the aggregation of ``core.reduce.aggregate``;
``agg_kwargs`` passes its divisors (norm_len, num_tokens, num_seqs).

Stats keys: ``approx_kl`` is k3 of pi_old against pi from the sampled tokens, mean((r - 1) - log r); the
clip fractions count the tokens whose gradient the clip removes (ratio below 1 - eps_low with A < 0, or
above 1 + eps_high with A > 0).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from gradascent.core.reduce import Aggregation, aggregate, masked_mean

Stats = dict[str, Tensor]


def _agg(x: Tensor, mask: Tensor | None, agg: Aggregation, agg_kwargs: dict[str, Any] | None) -> Tensor:
    return aggregate(x, mask, agg, **(agg_kwargs or {}))


def _same_shape(**tensors: Tensor | None) -> None:
    """Refuse tensors that would broadcast into a wrong loss: (N,) against (N, 1) makes an N x N product."""
    named = [(k, t) for k, t in tensors.items() if t is not None]
    first, shape = named[0][0], named[0][1].shape
    for name, t in named[1:]:
        if t.shape != shape:
            raise ValueError(f"{name} has shape {tuple(t.shape)}, {first} {tuple(shape)}: they must match")


def _counted(x: Tensor, mask: Tensor | None, fill: Tensor | float = 0.0) -> Tensor:
    """``x`` detached, with ``fill`` in the masked-out slots: a NaN or inf in padding then cannot reach the
    gradient through a product (0 * NaN) even though the aggregate leaves those slots out. The callers have
    checked that ``mask`` has the shape of ``x`` (``_same_shape``)."""
    x = x.detach()
    if mask is None:
        return x
    fill_t = fill if isinstance(fill, Tensor) else torch.full_like(x, fill)
    return torch.where(mask if mask.dtype == torch.bool else mask > 0, x, fill_t)


def _ratio_stats(log_ratio: Tensor, mask: Tensor | None) -> Stats:
    ratio = log_ratio.exp()
    return {
        "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask).detach(),
        "ratio_mean": masked_mean(ratio, mask).detach(),
    }


def policy_gradient_loss(
    logp: Tensor,
    adv: Tensor,
    mask: Tensor | None = None,
    *,
    agg: Aggregation = "token_mean",
    agg_kwargs: dict[str, Any] | None = None,
) -> tuple[Tensor, Stats]:
    """REINFORCE / A2C: L^PG = -E[log pi(a_t|s_t) * A_t] (eq. 2), A_t = G_t or G_t - V(s_t).

    Args:
        logp: (B, T) or (N,) log pi(a_t|s_t), with gradient.
        adv: same shape; the return or advantage (no gradient flows into it).
        mask: same shape, bool, or None.
    """
    _same_shape(logp=logp, adv=adv, mask=mask)
    loss = _agg(-logp * _counted(adv, mask), mask, agg, agg_kwargs)
    return loss, {"policy_loss": loss.detach()}


def clipped_surrogate_loss(
    logp: Tensor,
    logp_old: Tensor,
    adv: Tensor,
    mask: Tensor | None = None,
    *,
    clip_eps_low: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    agg: Aggregation = "token_mean",
    agg_kwargs: dict[str, Any] | None = None,
) -> tuple[Tensor, Stats]:
    """PPO's clipped surrogate, with clip-higher and an optional dual clip.

    r_t = exp(logp - logp_old)
    L^CLIP = E[min(r_t A_t, clip(r_t, 1 - eps_low, 1 + eps_high) A_t)]        (PPO eq. 7; DAPO eq. 10)
    dual clip (A_t < 0 only): max(L^CLIP_t, c * A_t), c > 1                   (Ye et al. 2020, eq. 5)
    loss = -aggregate(objective)

    Args:
        logp: (B, T) or (N,) log-probs under the current policy, with gradient.
        logp_old: same shape, from the policy that sampled (no gradient).
        adv: same shape, advantages (no gradient).
        mask: same shape, bool, or None.
        clip_eps_low, clip_eps_high: the clip range; ``clip_eps_high=None`` uses ``clip_eps_low``.
        dual_clip: the constant c > 1 of the dual clip, or None.
    """
    eps_high = clip_eps_low if clip_eps_high is None else clip_eps_high
    if not 0.0 <= clip_eps_low < 1.0 or not eps_high >= 0.0:
        raise ValueError(f"the clip range needs 0 <= clip_eps_low < 1 and clip_eps_high >= 0, got "
                         f"{clip_eps_low} and {eps_high}")
    _same_shape(logp=logp, logp_old=logp_old, adv=adv, mask=mask)
    adv = _counted(adv, mask)
    log_ratio = logp - _counted(logp_old, mask, logp.detach())  # ratio 1 in padding
    ratio = log_ratio.exp()
    surr1 = ratio * adv
    surr2 = ratio.clamp(1.0 - clip_eps_low, 1.0 + eps_high) * adv
    objective = torch.minimum(surr1, surr2)  # L^CLIP per token
    stats = _ratio_stats(log_ratio, mask)
    if dual_clip is not None:
        if dual_clip <= 1.0:
            raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
        lower = dual_clip * adv
        dual_active = (adv < 0) & (objective < lower)
        objective = torch.where(adv < 0, torch.maximum(objective, lower), objective)
        stats["clipfrac_dual"] = masked_mean(dual_active.to(logp.dtype), mask).detach()
    loss = -_agg(objective, mask, agg, agg_kwargs)
    low = ((ratio < 1.0 - clip_eps_low) & (adv < 0)).to(logp.dtype)
    high = ((ratio > 1.0 + eps_high) & (adv > 0)).to(logp.dtype)
    stats["clipfrac_low"] = masked_mean(low, mask).detach()
    stats["clipfrac_high"] = masked_mean(high, mask).detach()
    stats["clipfrac"] = stats["clipfrac_low"] + stats["clipfrac_high"]
    stats["policy_loss"] = loss.detach()
    return loss, stats


def kl_penalty_surrogate_loss(
    logp: Tensor,
    logp_old: Tensor,
    adv: Tensor,
    kl: Tensor,
    kl_coef: float,
    mask: Tensor | None = None,
    *,
    agg: Aggregation = "token_mean",
    agg_kwargs: dict[str, Any] | None = None,
) -> tuple[Tensor, Stats]:
    """PPO-Penalty: L^KLPEN = E[r_t A_t - beta * KL(pi_old(.|s_t) || pi(.|s_t))]   (PPO eq. 8).

    Args:
        logp, logp_old, adv, mask: as in ``clipped_surrogate_loss``.
        kl: same shape, per-state KL(pi_old || pi) with gradient through pi: exact (e.g.
            ``torch.distributions.kl_divergence``) or an estimator from ``core.kl``. It carries the gradient,
            so it must be finite in masked-out slots as well.
        kl_coef: beta, held by the trainer and adapted with ``core.kl.adaptive_kl_coef``.
    """
    _same_shape(logp=logp, logp_old=logp_old, adv=adv, kl=kl, mask=mask)
    log_ratio = logp - _counted(logp_old, mask, logp.detach())  # ratio 1 in padding
    ratio = log_ratio.exp()
    objective = ratio * _counted(adv, mask) - kl_coef * kl
    loss = -_agg(objective, mask, agg, agg_kwargs)
    stats = _ratio_stats(log_ratio, mask)
    stats["kl"] = masked_mean(kl, mask).detach()
    stats["policy_loss"] = loss.detach()
    return loss, stats


def value_loss(
    values: Tensor,
    returns: Tensor,
    values_old: Tensor | None = None,
    *,
    clip_eps: float | None = None,
    mask: Tensor | None = None,
    agg: Aggregation = "token_mean",
    agg_kwargs: dict[str, Any] | None = None,
) -> tuple[Tensor, Stats]:
    """Critic regression: L^V = 1/2 E[(V(s_t) - G_t)^2]; clipped (PPO baselines):

    V_clip = V_old + clip(V - V_old, -eps, eps);  L^V = 1/2 E[max((V - G)^2, (V_clip - G)^2)]

    Args:
        values: (B, T) or (N,) predictions, with gradient.
        returns: same shape, targets (no gradient).
        values_old: same shape, the predictions at collection time; needed when ``clip_eps`` is set.
        clip_eps: the value clip range, or None for the unclipped loss.
        mask: same shape, bool, or None.
    """
    _same_shape(values=values, returns=returns, values_old=values_old, mask=mask)
    returns = _counted(returns, mask)
    err = (values - returns) ** 2
    stats: Stats = {}
    if clip_eps is not None:
        if values_old is None:
            raise ValueError("the clipped value loss needs values_old")
        v_old = _counted(values_old, mask)
        v_clip = v_old + (values - v_old).clamp(-clip_eps, clip_eps)
        err_clip = (v_clip - returns) ** 2
        stats["value_clipfrac"] = masked_mean((err_clip > err).to(values.dtype), mask).detach()
        err = torch.maximum(err, err_clip)
    loss = 0.5 * _agg(err, mask, agg, agg_kwargs)
    stats["value_loss"] = loss.detach()
    return loss, stats


def entropy_loss(
    entropy: Tensor,
    mask: Tensor | None = None,
    *,
    agg: Aggregation = "token_mean",
    agg_kwargs: dict[str, Any] | None = None,
) -> tuple[Tensor, Stats]:
    """Entropy bonus as a loss: -E[H(pi(.|s_t))]; add ``ent_coef * loss`` to climb the entropy.

    Args:
        entropy: (B, T) or (N,) per-state entropy, with gradient.
        mask: same shape, bool, or None.
    """
    ent = _agg(entropy, mask, agg, agg_kwargs)
    return -ent, {"entropy": ent.detach()}


def bradley_terry_loss(
    r_chosen: Tensor,
    r_rejected: Tensor,
    margin: Tensor | float | None = None,
    center_coef: float = 0.0,
) -> tuple[Tensor, Stats]:
    """Reward-model loss on preference pairs: -log sigmoid(r_chosen - r_rejected - m), mean over pairs
    (Bradley & Terry 1952; Ouyang et al. 2022, eq. 1; margin m: Touvron et al. 2023, Llama 2 eq. 2), plus
    ``center_coef * mean((r_chosen + r_rejected)^2)`` to keep rewards centred (Eisenstein et al. 2023).

    Args:
        r_chosen, r_rejected: (B,) scalar rewards of the preferred and the other completion.
        margin: (B,) or scalar margin m, or None.
        center_coef: weight of the centring term.

    Stats: ``accuracy`` (fraction with r_chosen > r_rejected) and ``margin`` (mean r_chosen - r_rejected).
    """
    _same_shape(r_chosen=r_chosen, r_rejected=r_rejected)
    if r_chosen.dim() != 1:
        raise ValueError(f"r_chosen and r_rejected must be (B,), one score per pair, got {tuple(r_chosen.shape)}")
    diff = r_chosen - r_rejected
    logits = diff if margin is None else diff - margin
    loss = -torch.nn.functional.logsigmoid(logits).mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    stats = {
        "rm_loss": loss.detach(),
        "accuracy": (diff > 0).to(diff.dtype).mean().detach(),
        "margin": diff.mean().detach(),
    }
    return loss, stats
