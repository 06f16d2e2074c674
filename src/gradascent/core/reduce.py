"""Masked reductions: the one place where loss aggregation is chosen.

Mask convention for the whole codebase: ``mask`` is a bool tensor, True means "this element counts".
``mask=None`` means every element counts.

Aggregation modes (docs/equations.md, (R1)-(R3)):

- ``token_mean``: sum of all counted tokens over their number (DAPO, Yu et al. 2025). Every token weighs the
  same, whatever the length of its sequence.
- ``seq_mean_token_mean``: mean over tokens inside each sequence, then mean over sequences (GRPO paper,
  Shao et al. 2024). Tokens of short sequences weigh more: the length bias that Dr. GRPO points out. A row
  with no counted token adds 0 and still counts in B (as in TRL); pass ``num_seqs`` to count otherwise.
- ``seq_mean_token_sum_norm``: per-sequence token sum divided by a constant ``norm_len`` (e.g. the maximum
  completion length), then mean over sequences (Dr. GRPO, Liu et al. 2025). Unbiased in length.

For data-parallel training the divisors can be given from outside (``num_tokens``, ``num_seqs``): the global
counts over all ranks divided by the world size, so that the all-reduce mean of the ranks' gradients is the
gradient of the global aggregate.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
AGGREGATIONS: tuple[str, ...] = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def _as_weight(x: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return torch.ones_like(x)
    if mask.shape != x.shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match values shape {tuple(x.shape)}")
    return mask.to(x.dtype)


def masked_sum(x: Tensor, mask: Tensor | None = None, dim: int | None = None) -> Tensor:
    """Sum of the counted elements of ``x`` (all of them, or along ``dim``). Shapes: x, mask (...)."""
    if mask is None:  # everything counts: the same sum without building a weight tensor
        return x.sum() if dim is None else x.sum(dim)
    w = _as_weight(x, mask)
    # where() instead of x*w so that a NaN or inf in a masked-out slot cannot leak into the sum. (Its
    # gradient there is 0, but the chain rule still multiplies that 0 by the factors x was made of: the losses
    # of core.losses therefore zero their non-differentiated inputs in masked-out slots first.)
    xw = torch.where(w > 0, x, torch.zeros_like(x)) * w
    return xw.sum() if dim is None else xw.sum(dim)


def masked_mean(x: Tensor, mask: Tensor | None = None, dim: int | None = None) -> Tensor:
    """Mean of the counted elements; an empty selection gives 0, not NaN. Shapes: x, mask (...)."""
    if mask is None:
        return masked_sum(x, None, dim) / max(x.numel() if dim is None else x.shape[dim], 1)
    w = _as_weight(x, mask)
    count = w.sum() if dim is None else w.sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor | None = None, unbiased: bool = True) -> Tensor:
    """Variance of the counted elements of ``x`` (scalar). Shapes: x, mask (...)."""
    mean = masked_mean(x, mask)
    w = _as_weight(x, mask)
    n = w.sum()
    sq = masked_sum((x - mean) ** 2, mask)
    denom = (n - 1.0) if unbiased else n
    return sq / denom.clamp(min=1.0)


def aggregate(
    values: Tensor,
    mask: Tensor | None = None,
    mode: Aggregation = "token_mean",
    *,
    norm_len: float | None = None,
    num_tokens: Tensor | float | None = None,
    num_seqs: Tensor | float | None = None,
) -> Tensor:
    """Reduce per-token values to a scalar with the chosen aggregation (R1)-(R3).

    Args:
        values: (B, T) per-token values (a loss, an entropy...), or (N,) for ``token_mean``.
        mask: (B, T) bool, True where the token counts; None: all count.
        mode: ``token_mean`` | ``seq_mean_token_mean`` | ``seq_mean_token_sum_norm``.
        norm_len: the constant divisor of ``seq_mean_token_sum_norm``, > 0. Pass the completion budget
            (max_new_tokens), as Dr. GRPO does; the default, T (the padded length of this batch), changes from
            batch to batch.
        num_tokens: divisor of ``token_mean`` in place of the local token count (global count / world size).
            A divisor of 0 (no token counted anywhere) gives 0, as an empty selection does.
        num_seqs: divisor over sequences for the two ``seq_mean_*`` modes in place of B (0 gives 0 too).

    Returns:
        A scalar tensor.
    """
    if mode == "token_mean":
        total = masked_sum(values, mask)
        if num_tokens is None:
            if mask is None:
                return total / max(values.numel(), 1)
            count = _as_weight(values, mask).sum()
            return total / count.clamp(min=1.0)
        return _divide(total, num_tokens)
    if values.dim() != 2:
        raise ValueError(f"aggregation {mode!r} needs (B, T) values, got shape {tuple(values.shape)}")
    B, T = values.shape
    if mode == "seq_mean_token_mean":
        per_seq = masked_mean(values, mask, dim=-1)  # (B,)
    elif mode == "seq_mean_token_sum_norm":
        if norm_len is not None and not norm_len > 0:
            raise ValueError(f"norm_len must be > 0, got {norm_len}")
        per_seq = masked_sum(values, mask, dim=-1) / float(norm_len if norm_len is not None else max(T, 1))
    else:
        raise ValueError(f"unknown aggregation {mode!r}; expected one of {', '.join(AGGREGATIONS)}")
    if num_seqs is None:
        return per_seq.mean() if B > 0 else per_seq.sum()
    return _divide(per_seq.sum(), num_seqs)


def _divide(total: Tensor, divisor: Tensor | float) -> Tensor:
    """total / divisor, and 0 where the divisor is 0 (then nothing was counted and total is 0 as well)."""
    if not isinstance(divisor, Tensor):
        if divisor < 0:
            raise ValueError(f"a loss divisor must be >= 0, got {divisor}")
        return total / divisor if divisor > 0 else total * 0.0
    nonzero = divisor > 0
    return torch.where(nonzero, total / torch.where(nonzero, divisor, torch.ones_like(divisor)), total * 0.0)
