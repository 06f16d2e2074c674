"""The optimizer of the language-model trainers: ``torch.optim.AdamW`` with its fused kernel where possible.

On a CPU ``AdamW`` defaults to its per-tensor loop (the multi-tensor and fused kernels are a CUDA default
only); the fused kernel does the same update in one call per step: 3 ms instead of 9-24 ms for the
5.5 M-parameter preset's 60 tensors on the project's 2-core machine. The update rule is AdamW's either way.
Sharded parameters (FSDP2's DTensors) keep PyTorch's default choice.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def _fusable(p: torch.Tensor) -> bool:
    return type(p) in (torch.Tensor, torch.nn.Parameter) and p.device.type in ("cpu", "cuda") \
        and p.dtype in (torch.float32, torch.float16, torch.bfloat16)


def adamw(params: Iterable[Any], **kwargs: Any) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, **kwargs)``, fused when every parameter allows it.

    ``params``: tensors or parameter-group dicts, as AdamW takes them.
    """
    params = list(params)
    tensors = [p for g in params for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(_fusable(p) for p in tensors)
    return torch.optim.AdamW(params, fused=True if fused else None, **kwargs)
