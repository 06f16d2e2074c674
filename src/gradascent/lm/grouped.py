"""Log-probs of G completions that share one prompt, with the prompt run once per group.

GRPO scores G completions of every prompt. ``completion_logprobs`` runs each (prompt, completion) row
through the decoder, so every prompt is processed G times, forward and backward. Here the decoder runs each
distinct prompt once, keeps its keys and values (with their autograd history), repeats them G times
(``repeat_interleave``, whose backward sums the G gradients) and runs only the completion tokens on top.
The result, and its gradient, equal ``completion_logprobs`` on the repeated rows up to float rounding
(tests/lm/test_grouped.py); the prompt's share of the training FLOPs falls by a factor G.

Layout: prompts left-padded (their last column is a real token, as ``encode_prompts`` and ``generate`` lay
them out); the G completions of prompt i are rows i*G .. i*G + G - 1. Only the hidden states of the scored
positions reach the LM head, in chunks, as in ``lm.logprobs``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gradascent.errors import DataError
from gradascent.lm.logprobs import head_logprobs
from gradascent.lm.models import check_token_ids, position_ids_from_mask
from gradascent.lm.onednn import onednn_linears


def grouped_completion_logprobs(
    model: nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    completion_ids: Tensor,
    completion_mask: Tensor,
    group_size: int,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Per-token log-probs of ``completion_ids`` given their shared prompts.

    Args:
        model: a causal LM of ``transformers`` whose decoder accepts a ``DynamicCache`` (Qwen2, Llama...).
        prompt_ids, prompt_mask: (P, Lp) left-padded distinct prompts and their bool mask.
        completion_ids, completion_mask: (P * G, T) completions, the G of prompt i contiguous; mask True up
            to and including EOS.
        group_size: G.
        temperature: the sampling temperature.
        with_entropy: also return the per-token entropy.

    Returns:
        logp (P * G, T) float32, 0 where ``completion_mask`` is False; with ``with_entropy``, (logp, entropy).
    """
    if prompt_mask.shape != prompt_ids.shape or completion_mask.shape != completion_ids.shape:
        raise DataError(f"prompt ids {tuple(prompt_ids.shape)} / mask {tuple(prompt_mask.shape)} and completion "
                        f"ids {tuple(completion_ids.shape)} / mask {tuple(completion_mask.shape)}: each mask must "
                        "have its ids' shape")
    check_token_ids(prompt_ids, model, "prompt_ids")
    check_token_ids(completion_ids, model, "completion_ids")
    P, Lp = prompt_ids.shape
    N, T = completion_ids.shape
    G = group_size
    if N != P * G:
        raise DataError(f"{N} completions for {P} prompts of {G} completions each")
    pmask, cmask = prompt_mask.bool(), completion_mask.bool()
    if P and not bool(pmask[:, -1].all()):
        raise DataError("grouped log-probs need left-padded prompts (the last column a real token)")
    with onednn_linears(model):
        return _grouped(model, prompt_ids, pmask, completion_ids, cmask, G, temperature, with_entropy)


def _grouped(model: nn.Module, prompt_ids: Tensor, pmask: Tensor, completion_ids: Tensor, cmask: Tensor, G: int,
             temperature: float, with_entropy: bool) -> Tensor | tuple[Tensor, Tensor]:
    from transformers import DynamicCache

    N, T = completion_ids.shape
    base, head = model.base_model, model.get_output_embeddings()
    cache = DynamicCache(config=model.config)
    out = base(input_ids=prompt_ids, attention_mask=pmask.long(), position_ids=position_ids_from_mask(pmask),
               cache=cache, use_cache=True)
    h_first = out.last_hidden_state[:, -1].repeat_interleave(G, dim=0)  # (N, H): predicts completion token 0
    hidden = h_first.unsqueeze(1)
    if T > 1:  # completion tokens 0 .. T-2 on top of the repeated prompt cache predict tokens 1 .. T-1
        cache.batch_repeat_interleave(G)
        full_mask = torch.cat([pmask.repeat_interleave(G, dim=0), cmask[:, :-1]], dim=1)  # (N, Lp + T - 1)
        start = pmask.sum(-1).repeat_interleave(G)  # (N,) position of completion token 0
        pos = start[:, None] + torch.arange(T - 1, device=start.device)[None]
        out = base(input_ids=completion_ids[:, :-1], attention_mask=full_mask.long(), position_ids=pos,
                   cache=cache, use_cache=True)
        hidden = torch.cat([hidden, out.last_hidden_state], dim=1)  # (N, T, H)
    rows, cols = cmask.nonzero(as_tuple=True)
    h, targets = hidden[rows, cols], completion_ids[rows, cols]  # (K, H), (K,)
    flat = head_logprobs(head, h, targets, temperature=temperature, with_entropy=with_entropy)
    logp = hidden.new_zeros((N, T), dtype=torch.float32).index_put((rows, cols), flat[0] if with_entropy else flat)
    if not with_entropy:
        return logp
    return logp, hidden.new_zeros((N, T), dtype=torch.float32).index_put((rows, cols), flat[1])


class GroupedLogprobs(nn.Module):
    """``grouped_completion_logprobs`` of ``model`` as a module's forward, so that DistributedDataParallel can
    wrap it (DDP synchronises gradients only of passes made through its own forward)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor, completion_mask: Tensor,
                group_size: int, *, temperature: float = 1.0,
                with_entropy: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        return grouped_completion_logprobs(self.model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                           group_size, temperature=temperature, with_entropy=with_entropy)
