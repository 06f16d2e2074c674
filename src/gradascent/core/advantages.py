"""Advantages: A_t = G_t - V(s_t), whitening, and the critic-free baselines of the LLM line.

Sources: Williams 1992 (baselines), Mnih et al. 2016 (A2C), Shao et al. 2024 (GRPO, DeepSeekMath:
group-normalised outcome rewards), Ahmadian et al. 2024 / Kool et al. 2019 (RLOO, leave-one-out baseline),
Liu et al. 2025 (Dr. GRPO: dividing by the group std biases the update towards groups whose rewards barely
differ, so ``scale_by_std=False`` is offered).
"""

from __future__ import annotations

import torch
from torch import Tensor

from gradascent.core.reduce import masked_mean, masked_var
from gradascent.core.returns import as_float


def advantages_from_returns(returns: Tensor, values: Tensor) -> Tensor:
    """A_t = G_t - V(s_t) (A2C). Shapes: (...) each, equal."""
    if returns.shape != values.shape:
        raise ValueError(f"returns {tuple(returns.shape)} and values {tuple(values.shape)} differ in shape")
    return returns - values


def whiten(x: Tensor, mask: Tensor | None = None, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mean) / (std + eps) over the counted elements; masked-out elements come back as 0.

    ``shift_mean=False`` only rescales (as RLHF does for rewards). Uses the unbiased std, as PPO
    implementations do; a single counted element is only centred. Shapes: x, mask (...); ``mask`` bool.
    """
    if mask is not None and mask.dtype != torch.bool:
        raise ValueError(f"whiten needs a bool mask (True counts), got {mask.dtype}")
    mean = masked_mean(x, mask)
    std = masked_var(x, mask, unbiased=True).sqrt()
    out = (x - mean) / (std + eps) if shift_mean else x / (std + eps)
    if mask is not None:
        out = torch.where(mask, out, torch.zeros_like(out))
    return out


def _groups(rewards: Tensor, group_size: int | None) -> Tensor:
    rewards = as_float(rewards)
    if rewards.dim() == 2 and group_size is None:
        return rewards
    if group_size is None or group_size < 1:
        raise ValueError("flat rewards need group_size >= 1")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.reshape(-1, group_size)


def group_advantages(
    rewards: Tensor,
    group_size: int | None = None,
    scale_by_std: bool = True,
    eps: float = 1e-4,
) -> Tensor:
    """Group-relative advantage of GRPO: A_i = (r_i - mean(r_group)) / (std(r_group) + eps).

    Every completion of a prompt is compared with its G siblings; no critic. ``scale_by_std=False`` gives
    A_i = r_i - mean(r_group) (Dr. GRPO). The std is the unbiased one (correction 1).

    Args:
        rewards: (P, G) for P prompts of G completions each, or flat (P*G,) with ``group_size=G``
            (completions of one prompt contiguous).
        group_size: G when ``rewards`` is flat.
        scale_by_std: divide by the group std.
        eps: added to the std.

    Returns:
        Advantages of the same shape as ``rewards`` (float; integer or bool rewards are taken as float32). A
        group whose rewards all agree gets exactly 0 (its float mean may differ from the rewards by a rounding
        error, which the division would magnify). A non-finite reward makes its group's advantages
        non-finite: the trainers check rewards before they get here.
    """
    g = _groups(rewards, group_size)
    adv = g - g.mean(dim=-1, keepdim=True)
    if scale_by_std:
        std = g.std(dim=-1, keepdim=True) if g.shape[-1] > 1 else torch.zeros_like(adv[..., :1])
        adv = adv / (std + eps)
    return adv.masked_fill(_all_equal(g), 0.0).reshape(rewards.shape)


def _all_equal(g: Tensor) -> Tensor:
    """(..., 1) bool: True for the groups whose rewards are all equal."""
    return (g == g[..., :1]).all(dim=-1, keepdim=True)


def rloo_advantages(rewards: Tensor, group_size: int | None = None) -> Tensor:
    """Leave-one-out baseline: A_i = r_i - (1/(G-1)) sum_{j != i} r_j = G/(G-1) (r_i - mean(r_group)).

    Unbiased, since each baseline is independent of its own sample. Needs G >= 2.
    Shapes as ``group_advantages``; a group whose rewards all agree gets exactly 0.
    """
    g = _groups(rewards, group_size)
    G = g.shape[-1]
    if G < 2:
        raise ValueError("the leave-one-out baseline needs at least 2 completions per prompt")
    baseline = (g.sum(dim=-1, keepdim=True) - g) / (G - 1)
    return (g - baseline).masked_fill(_all_equal(g), 0.0).reshape(rewards.shape)


def batch_mean_advantages(rewards: Tensor) -> Tensor:
    """REINFORCE with a batch-mean baseline: A_i = r_i - mean(r). Shapes: (...)."""
    rewards = as_float(rewards)
    return rewards - rewards.mean()


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor | None = None) -> Tensor:
    """1 - Var[G - V] / Var[G]: 1 is a perfect critic, 0 a constant one, < 0 worse than constant.

    NaN when the returns have no variance. Shapes: (...) each.
    """
    var_ret = masked_var(returns, mask, unbiased=False)
    var_err = masked_var(returns - values, mask, unbiased=False)
    return torch.where(var_ret > 0, 1.0 - var_err / var_ret, torch.full_like(var_ret, float("nan")))
