"""Per-token log-probabilities (and entropies) of given tokens under a causal LM, without a (B, T, V) tensor.

log pi(y_t | x, y_<t) = z_t[y_t] / tau - logsumexp(z_t / tau), with z_t the logits at the position before y_t
(``core.logits.token_logprobs``). The same function serves the policy, the old policy and the reference
model; the temperature must be the one used for sampling, or the ratio pi/pi_old compares two different
distributions (docs/equations.md).

Memory: the decoder runs once and returns hidden states (B, L, H); only the hidden states of the requested
positions are gathered (K of them, K <= B * L) and pushed through the LM head in chunks of
``chunk_tokens`` rows, each chunk's float32 logits (chunk, V) freed before the next. With gradients
enabled each chunk is wrapped in activation checkpointing, so the backward pass recomputes the chunk's
logits instead of keeping all of them: peak memory holds one chunk of logits, not K x V
(bench/logprob_memory.py measures it).

Models whose forward changes the logits after the LM head (``final_logit_softcapping``, ``logit_scale``) are
refused rather than silently mis-scored.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from gradascent.core.logits import entropy_from_logits, token_logprobs
from gradascent.errors import ConfigError, DataError
from gradascent.lm.heads import backbone_hidden_states
from gradascent.lm.models import check_token_ids, previous_token_index
from gradascent.lm.onednn import onednn_linears

# Logits elements per chunk when ``chunk_tokens`` is not given: 2**23 float32 = 32 MiB.
_CHUNK_ELEMENTS = 1 << 23


def _check_model(model: nn.Module) -> nn.Module:
    cfg = model.config
    for attr in ("final_logit_softcapping", "logit_scale"):
        if getattr(cfg, attr, None) not in (None, 1.0):
            raise ConfigError(f"{type(model).__name__} transforms its logits ({attr}={getattr(cfg, attr)}); "
                              "gradascent's log-probs read the LM head directly and do not support it")
    head = model.get_output_embeddings()
    if head is None:
        raise ConfigError(f"{type(model).__name__} has no output embedding (LM head)")
    return head


def _chunk_stats(head: nn.Module, h: Tensor, targets: Tensor, temperature: float, with_entropy: bool) -> Tensor:
    """(K, H) hidden, (K,) targets -> (K,) log-probs, or (2, K) log-probs and entropies."""
    with onednn_linears(head):  # here, not around the caller: a checkpoint's recomputation must match
        logits = head(h)  # (K, V)
    logp = token_logprobs(logits, targets, temperature)
    if not with_entropy:
        return logp
    return torch.stack([logp, entropy_from_logits(logits, temperature)])


def head_logprobs(
    head: nn.Module,
    hidden: Tensor,
    targets: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int | None = None,
) -> Tensor:
    """Log-probs (and entropies) of ``targets`` from the hidden states that predict them, through the LM head
    chunk by chunk (checkpointed under autograd), never holding more than one chunk of logits.

    Shapes: hidden (K, H), targets (K,) -> (K,) float32, or (2, K) [logp; entropy] with ``with_entropy``.
    """
    chunk = chunk_tokens or max(1, _CHUNK_ELEMENTS // int(head.weight.shape[0]))
    use_ckpt = torch.is_grad_enabled() and hidden.requires_grad
    pieces = []
    for s in range(0, hidden.shape[0], chunk):
        args = (head, hidden[s:s + chunk], targets[s:s + chunk], temperature, with_entropy)
        pieces.append(checkpoint(_chunk_stats, *args, use_reentrant=False) if use_ckpt else _chunk_stats(*args))
    if not pieces:
        return hidden.new_zeros((2, 0) if with_entropy else (0,), dtype=torch.float32)
    return torch.cat(pieces, dim=-1).float()


def sequence_logprobs(
    model: nn.Module,
    input_ids: Tensor,
    mask: Tensor,
    target_mask: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int | None = None,
    position_ids: Tensor | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Log-probs of the tokens of ``input_ids`` selected by ``target_mask``, each given the tokens before it.

    Padding may be anywhere (left, right, or both); positions are counted over the real tokens of each row.

    Args:
        model: a causal LM (``transformers``). Gradients flow when they are enabled.
        input_ids: (B, L) long.
        mask: (B, L) bool, True on real tokens (never derived from a pad id, so pad == eos is safe).
        target_mask: (B, L) bool, True on the tokens to score; a row's first real token cannot be scored.
        temperature: > 0, the sampling temperature.
        with_entropy: also return the entropy of each scored position's distribution (at ``temperature``).
        chunk_tokens: scored positions per LM-head chunk (default: 2**23 / V).
        position_ids: (B, L) for packed rows, restarting at 0 at each example (``backbone_hidden_states``);
            an example's first token must then not be a target.

    Returns:
        logp (B, L) float32, 0 where ``target_mask`` is False; with ``with_entropy``, (logp, entropy).
    """
    if not temperature > 0:
        raise ConfigError(f"temperature must be > 0, got {temperature}")
    if input_ids.shape != mask.shape or input_ids.shape != target_mask.shape or input_ids.dim() != 2:
        raise DataError(f"input_ids {tuple(input_ids.shape)}, mask {tuple(mask.shape)} and target_mask "
                        f"{tuple(target_mask.shape)} must be (B, L) tensors of one shape")
    target_mask, mask = target_mask.bool(), mask.bool()
    if bool((target_mask & ~mask).any()):
        raise DataError("target_mask marks a padding token (mask is False there)")
    head = _check_model(model)
    check_token_ids(input_ids, model, "input_ids")
    if chunk_tokens is not None and chunk_tokens < 1:
        raise ConfigError(f"chunk_tokens must be >= 1, got {chunk_tokens}")
    B, L = input_ids.shape
    prev = previous_token_index(mask)  # (B, L): the logits predicting a token live there
    if bool((target_mask & (prev < 0)).any()):
        raise DataError("target_mask marks a row's first real token, which has no preceding token to condition on")
    hidden = backbone_hidden_states(model, input_ids, mask, position_ids)  # (B, L, H)
    rows, cols = target_mask.nonzero(as_tuple=True)  # K scored tokens
    h = hidden[rows, prev[rows, cols]]  # (K, H)
    flat = head_logprobs(head, h, input_ids[rows, cols], temperature=temperature, with_entropy=with_entropy,
                         chunk_tokens=chunk_tokens)
    logp = hidden.new_zeros((B, L), dtype=torch.float32).index_put((rows, cols), flat[0] if with_entropy else flat)
    if not with_entropy:
        return logp
    ent = hidden.new_zeros((B, L), dtype=torch.float32).index_put((rows, cols), flat[1])
    return logp, ent


class SequenceLogprobs(nn.Module):
    """``sequence_logprobs`` of ``model`` as a module's forward, so that DistributedDataParallel can wrap it
    (DDP synchronises gradients only of passes made through its own forward)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, mask: Tensor, target_mask: Tensor, *,
                position_ids: Tensor | None = None) -> Tensor:
        return sequence_logprobs(self.model, input_ids, mask, target_mask, position_ids=position_ids)  # type: ignore[return-value]


def completion_logprobs(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
    chunk_tokens: int | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Log-probs of completion tokens given their prompts: the layout ``generate`` returns.

    Args:
        prompt_ids, prompt_mask: (B, P) prompts (left- or right-padded) and their bool mask.
        completion_ids, completion_mask: (B, T) completions and their bool mask (True up to and including EOS).
        Other arguments as ``sequence_logprobs``.

    Returns:
        logp (B, T) float32, 0 where ``completion_mask`` is False; with ``with_entropy``, (logp, entropy).
    """
    if prompt_ids.shape[0] != completion_ids.shape[0]:
        raise DataError(f"{prompt_ids.shape[0]} prompts for {completion_ids.shape[0]} completions")
    P = prompt_ids.shape[1]
    input_ids = torch.cat([prompt_ids, completion_ids.to(prompt_ids.device)], dim=1)
    cmask = completion_mask.bool().to(prompt_ids.device)
    mask = torch.cat([prompt_mask.bool(), cmask], dim=1)
    target = torch.cat([torch.zeros_like(prompt_mask, dtype=torch.bool), cmask], dim=1)
    out: Any = sequence_logprobs(model, input_ids, mask, target, temperature=temperature,
                                 with_entropy=with_entropy, chunk_tokens=chunk_tokens)
    if with_entropy:
        return out[0][:, P:], out[1][:, P:]
    return out[:, P:]
