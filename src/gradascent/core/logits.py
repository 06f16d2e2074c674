"""Per-token log-probabilities and entropies from logits.

log pi(a|s) = z_a / tau - logsumexp(z / tau): a gather minus a logsumexp, which never builds the full
(B, T, V) log-softmax. Pitfall (docs/equations.md): the temperature tau used for sampling must be applied
here too, or the ratio pi/pi_old compares two different distributions.
"""

from __future__ import annotations

import torch
from torch import Tensor


def token_logprobs(logits: Tensor, tokens: Tensor, temperature: float = 1.0) -> Tensor:
    """log softmax(logits / temperature)[tokens], computed in float32.

    Shapes: logits (..., V), tokens (...) long -> (...) float32.
    """
    _check_temperature(temperature)
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    picked = z.gather(-1, tokens.long().unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(z, dim=-1)


def entropy_from_logits(logits: Tensor, temperature: float = 1.0) -> Tensor:
    """H = logsumexp(z) - sum_a softmax(z)_a z_a, with z = logits / temperature, in float32.

    Logits of -inf (tokens masked out of the vocabulary) have probability 0 and add nothing.
    Shapes: (..., V) -> (...).
    """
    _check_temperature(temperature)
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    p = torch.softmax(z, dim=-1)
    z_finite = torch.where(p > 0, z, torch.zeros_like(z))  # 0 * -inf would be NaN
    return torch.logsumexp(z, dim=-1) - (p * z_finite).sum(-1)


def _check_temperature(temperature: float) -> None:
    if not temperature > 0 or temperature == float("inf"):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
