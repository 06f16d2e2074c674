"""Scalar heads over a causal-LM backbone: a value head (critic) and a reward head.

Both are ``Linear(hidden, 1)`` on the backbone's last hidden states (after its final norm):

- ``ValueModel``: one value per token, V(s_t) for the prefix ending at token t (PPO's critic for RLHF).
- ``RewardModel``: one scalar per sequence, read at the last real token (Ziegler et al. 2019,
  arXiv:1909.08593; Ouyang et al. 2022), trained on preference pairs with a Bradley-Terry loss.

A saved head model is a directory holding the backbone exactly as ``save_model`` writes it (so the same
directory also loads as a plain causal LM, e.g. to start a policy from a reward model's backbone), plus

    head.safetensors   the head's weight (1, hidden) and bias (1,)
    head.json          {"format": 1, "kind": "value" | "reward", "hidden_size": H}

The head is initialised with N(0, 1/(H+1)) weights and a zero bias (as in Ziegler et al.'s reward models), so
initial outputs are of order one whatever the hidden size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor, nn

from gradascent.errors import CheckpointError, DataError
from gradascent.lm.models import load_model, position_ids_from_mask, previous_token_index, read_json, save_model
from gradascent.lm.onednn import onednn_linears
from gradascent.run.files import save_tensors

HEAD_FORMAT = 1
H = TypeVar("H", bound="ScalarHeadModel")


def backbone_hidden_states(model: nn.Module, input_ids: Tensor, mask: Tensor,
                           position_ids: Tensor | None = None) -> Tensor:
    """Last hidden states of a causal LM's decoder (no LM head), with positions counted from the real tokens.

    ``position_ids=None``: one sequence per row, padding anywhere, positions from ``mask``. Given
    ``position_ids``: packed rows, each example's positions restarting at 0; attention then stays within
    each example (``transformers`` reads the example boundaries from the positions) and ``mask`` is unused.

    Shapes: input_ids, mask, position_ids (B, T) -> (B, T, H) in the model's dtype.
    """
    for name, t in (("mask", mask), ("position_ids", position_ids)):
        if t is not None and t.shape != input_ids.shape:
            raise DataError(f"{name} has shape {tuple(t.shape)}, input_ids {tuple(input_ids.shape)}: they must match")
    base = model.base_model
    with onednn_linears(base):
        if position_ids is None:
            out = base(  # type: ignore[operator]
                input_ids=input_ids, attention_mask=mask.long(), position_ids=position_ids_from_mask(mask),
                use_cache=False,
            )
        else:
            out = base(input_ids=input_ids, position_ids=position_ids, use_cache=False)  # type: ignore[operator]
    return out.last_hidden_state


class ScalarHeadModel(nn.Module):
    """A causal-LM ``backbone`` and a ``Linear(hidden, 1)`` head; subclasses choose where the scalar is read."""

    kind: ClassVar[str] = ""

    def __init__(self, backbone: nn.Module, head: nn.Linear | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        hidden = int(backbone.config.hidden_size)  # type: ignore[union-attr]
        if head is None:
            head = nn.Linear(hidden, 1)
            nn.init.normal_(head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(head.bias)
            p = next(backbone.parameters())
            head = head.to(device=p.device, dtype=p.dtype)
        self.head = head

    @property
    def config(self) -> Any:
        return self.backbone.config

    def freeze_lm_head(self) -> None:
        """Stop training the backbone's LM head when it is a weight of its own (not tied to the embedding): a
        scalar head never reads it, and DistributedDataParallel requires every trained weight to be used."""
        lm_head = self.backbone.get_output_embeddings()
        if lm_head is not None and lm_head.weight is not self.backbone.get_input_embeddings().weight:
            lm_head.requires_grad_(False)

    def token_scores(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        """The head applied at every position, float32. Shapes: (B, T) -> (B, T)."""
        h = backbone_hidden_states(self.backbone, input_ids, mask)
        return self.head(h).squeeze(-1).float()

    def save_pretrained(self, path: str | os.PathLike[str], tokenizer: Any = None) -> Path:
        """Write backbone (+ tokenizer) with ``save_model`` and the head beside it."""
        p = save_model(self.backbone, tokenizer, path)
        save_tensors({"weight": self.head.weight.detach().cpu().contiguous(),
                      "bias": self.head.bias.detach().cpu().contiguous()}, p / "head.safetensors")
        meta = {"format": HEAD_FORMAT, "kind": self.kind, "hidden_size": int(self.head.in_features)}
        (p / "head.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return p

    @classmethod
    def from_pretrained(
        cls: type[H],
        path: str | os.PathLike[str],
        *,
        new_head: bool = False,
        dtype: str | torch.dtype | None = None,
        device: str | torch.device | None = None,
        tokenizer: Any = None,
    ) -> tuple[H, Any]:
        """Load ``(model, tokenizer)`` from a directory written by ``save_pretrained``.

        ``new_head=True`` accepts a directory without a head (a plain causal LM, e.g. the SFT policy) and
        initialises a fresh one; otherwise a missing head is a CheckpointError. A head of the other kind
        (a value head loaded as a reward model) is refused.
        """
        p = Path(path)
        backbone, tokenizer = load_model(p, tokenizer, dtype=dtype, device=device)
        if not (p / "head.json").exists():
            if new_head:
                return cls(backbone), tokenizer
            hint = "a reward model is trained by `gradascent rm`" if cls.kind == "reward" else \
                "a value model is written by `gradascent ppo` beside its policy"
            raise CheckpointError(f"no {cls.kind} head in {p}: head.json is missing; {hint} (from Python, "
                                  "new_head=True starts a fresh head on this backbone)")
        meta = read_json(p / "head.json")
        if meta.get("kind") != cls.kind:
            raise CheckpointError(f"{p} holds a {meta.get('kind')!r} head, not a {cls.kind!r} head")
        hidden = int(backbone.config.hidden_size)
        if int(meta.get("hidden_size", -1)) != hidden:
            raise CheckpointError(f"the head in {p} expects hidden size {meta.get('hidden_size')}, "
                                  f"the backbone has {hidden}")
        try:
            weights = load_file(str(p / "head.safetensors"))
        except FileNotFoundError:
            raise CheckpointError(f"{p / 'head.safetensors'} is missing") from None
        except (SafetensorError, OSError) as exc:
            raise CheckpointError(f"{p / 'head.safetensors'} is corrupt: {exc}") from None
        if set(weights) != {"weight", "bias"} or tuple(weights["weight"].shape) != (1, hidden):
            raise CheckpointError(f"{p / 'head.safetensors'} does not hold a (1, {hidden}) head")
        if not all(bool(torch.isfinite(w).all()) for w in weights.values()):
            raise CheckpointError(f"{p / 'head.safetensors'} holds NaN or inf; the head cannot be used")
        head = nn.Linear(hidden, 1)
        head.load_state_dict(weights)
        pb = next(backbone.parameters())
        return cls(backbone, head.to(device=pb.device, dtype=pb.dtype)), tokenizer


class ValueModel(ScalarHeadModel):
    """Critic: V(s_t) at every token. ``forward(input_ids, mask) -> (B, T)`` float32 values.

    ``values[:, t]`` is the value of the state after reading tokens 0..t; ``completion_values`` returns, for each
    completion token, the value of the state it was sampled from (PPO's per-token values).
    """

    kind: ClassVar[str] = "value"

    def forward(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        return self.token_scores(input_ids, mask)

    def completion_values(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                          completion_mask: Tensor) -> Tensor:
        """V(s_t) for each completion token: the value at the last real token before it (the layout of
        ``generate`` and ``completion_logprobs``). Shapes: (B, P), (B, P), (B, T), (B, T) -> (B, T) float32,
        0 where ``completion_mask`` is False."""
        for name, t, ref in (("prompt_mask", prompt_mask, prompt_ids), ("completion_mask", completion_mask,
                                                                          completion_ids)):
            if t.shape != ref.shape:
                raise DataError(f"{name} has shape {tuple(t.shape)}, its ids {tuple(ref.shape)}: they must match")
        P = prompt_ids.shape[1]
        ids = torch.cat([prompt_ids, completion_ids], dim=1)
        cmask = completion_mask.bool()
        mask = torch.cat([prompt_mask.bool(), cmask], dim=1)
        values = self.token_scores(ids, mask)  # (B, P + T)
        prev = previous_token_index(mask)[:, P:].clamp(min=0)  # (B, T)
        return torch.where(cmask, values.gather(1, prev), torch.zeros_like(values[:, P:]))


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last True of each row (left or right padding alike); 0 for an all-False row.

    Shapes: (B, T) bool -> (B,) long.
    """
    T = mask.shape[-1]
    idx = torch.arange(T, device=mask.device).expand_as(mask)
    return torch.where(mask, idx, torch.zeros_like(idx)).amax(-1)


class RewardModel(ScalarHeadModel):
    """Reward model: r(x, y) read at the last real token. ``forward(input_ids, mask) -> (B,)`` float32."""

    kind: ClassVar[str] = "reward"

    def forward(self, input_ids: Tensor, mask: Tensor) -> Tensor:
        mask = mask.bool()
        h = backbone_hidden_states(self.backbone, input_ids, mask)  # (B, T, H)
        if not bool(mask.any(-1).all()):
            raise DataError(f"row {int((~mask.any(-1)).nonzero()[0])} has no real token to score (its mask is all "
                            "False)")
        last = last_token_index(mask)  # (B,)
        h_last = h[torch.arange(h.shape[0], device=h.device), last]  # (B, H)
        return self.head(h_last).squeeze(-1).float()
