"""Data parallelism on torch.distributed: launch with ``torchrun --nproc-per-node N``.

Nothing here is home-made communication: process groups come from ``torch.distributed`` (gloo on CPU;
NCCL for CUDA tensors on GPU, with gloo beside it for small CPU tensors), gradients are averaged by
``DistributedDataParallel``, or parameters, gradients and optimizer state are sharded by FSDP2's
``fully_shard``. What this module adds is the bookkeeping every trainer needs:

- ``init()``: join the group that torchrun describes in the environment (a no-op for one process);
- ``shard(items)``: the slice of a global batch that this rank owns (contiguous, so groups stay whole);
- ``local_rows(n)``: the same for a batch that need not split evenly (the short last batch of an epoch), with
  the weight of this rank's loss;
- ``global_count(x)``: all-reduced sums, e.g. the number of loss tokens over all ranks. The loss on each
  rank is its local token sum over ``global_tokens / world_size``, so that DDP's *mean* of the ranks'
  gradients is the gradient of the global token mean, whatever number of tokens each rank holds;
- ``reduce_metrics``: means of scalar metrics over ranks (sums for counts), for logging on rank 0 only;
- ``gather_list``, ``any_rank``: every rank's results of a sharded evaluation, and one decision for all ranks
  (a stop requested by a signal that reached some ranks a step before the others);
- ``wrap(lm, fsdp)``: the training forward as the run uses it (itself, in DDP, or sharded with FSDP2), and
  for a sharded model ``full_weights`` (every parameter whole for the duration of a block: sampling and
  evaluation), ``full_model_state`` (the final model) and ``full_state`` / ``load_full_state`` (checkpoints
  in the unsharded layout of a one-process run, so that any number of processes, sharded or not, resumes
  them).

FSDP2 averages the ranks' gradients as DDP does (its reduce-scatter divides by the world size), so the loss
divisors of ``loss_divisor`` serve both.
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.tensor import DTensor

from gradascent.errors import ConfigError, GradascentWarning

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def check_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch.device, or a ConfigError if torch cannot name it or this machine lacks it
    (``cuda`` without a CUDA build of torch or a visible GPU, ``mps`` off Apple silicon)."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"device {str(device)!r} is not a torch device (e.g. 'cpu', 'cuda', 'cuda:1')") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        build = "this torch has no CUDA support" if torch.version.cuda is None else "no GPU is visible"
        raise ConfigError(f"device {str(device)!r} asks for a CUDA GPU, but {build}; use device 'cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} GPU(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {str(device)!r} asks for Apple's MPS, which this machine lacks; use 'cpu'")
    return dev


def process_device(device: str) -> torch.device:
    """The device this process computes on: ``cuda`` means this process's own GPU, ``cuda:LOCAL_RANK``
    (torchrun's local rank, 0 for one process); any other device as given."""
    if device == "cuda":
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    return torch.device(device)


def refuse_several_processes(what: str) -> None:
    """A ConfigError, on every process, when ``what`` (a command that runs in one process) is launched by
    torchrun with several: the copies would each write the same run directory or print the same result."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        raise ConfigError(f"{what} runs in one process, and torchrun started {world}; launch it without torchrun "
                          "(sft, grpo, rm, ppo and rlhf train data-parallel)")


def init(device: str = "cpu") -> DistInfo:
    """Join the process group described by torchrun's environment; single-process runs need nothing.
    ``device`` is checked first (``check_device``)."""
    check_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        # On GPUs, NCCL for CUDA tensors and gloo for the CPU ones (counts, metrics, pickled objects).
        backend = "cpu:gloo,cuda:nccl" if device.startswith("cuda") and torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda") and torch.cuda.is_available():
        torch.cuda.set_device(local)
    if dist.get_rank() != 0:  # one weight-loading progress bar per run, not one per process
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        # and each of gradascent's warnings once: the ranks run the same checks on the same config and data
        warnings.filterwarnings("ignore", category=GradascentWarning)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local)


def info() -> DistInfo:
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return DistInfo()


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This rank's contiguous slice of a global batch; the batch must split evenly."""
    n = len(items)
    if n % world_size:
        raise ConfigError(f"a global batch of {n} does not split evenly over {world_size} processes; choose a "
                          f"batch size (e.g. prompts_per_step) divisible by the number of processes")
    per = n // world_size
    return list(items[rank * per:(rank + 1) * per])


def local_rows(n: int, rank: int, world_size: int) -> tuple[slice, float]:
    """This rank's contiguous rows of a global batch of ``n`` rows, and the weight of its loss.

    The rows split as evenly as possible (the first ``n % world_size`` ranks hold one more). A rank left
    without rows (``n < world_size``) gets row 0 with weight 0.0: it still makes its forward and backward
    pass, since DDP's gradient all-reduce needs every rank, and adds nothing to the gradient.
    """
    per, extra = divmod(n, world_size)
    start = rank * per + min(rank, extra)
    stop = start + per + (1 if rank < extra else 0)
    if start == stop:
        return slice(0, 1), 0.0
    return slice(start, stop), 1.0


def global_count(x: torch.Tensor | float) -> torch.Tensor:
    """Sum of ``x`` over all ranks (``x`` itself for one process). Returns a float64 tensor."""
    t = torch.as_tensor(x, dtype=torch.float64).clone()
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def loss_divisor(local_count: torch.Tensor | float) -> torch.Tensor:
    """The divisor that makes DDP's gradient mean equal the gradient of the global mean:
    (global count) / world_size. With one process it is the local count."""
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    return (global_count(local_count) / world).clamp(min=1e-12)


def reduce_metrics(metrics: dict[str, Any], sums: Sequence[str] = ()) -> dict[str, Any]:
    """Mean over ranks of every numeric metric, the sum for the keys in ``sums`` (counts such as tokens), in
    one all-reduce; other values are taken from this rank."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return metrics
    keys = [k for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor)) and not isinstance(v, bool)]
    vals = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(vals, op=dist.ReduceOp.SUM)
    out = dict(metrics)
    out.update({k: v.item() if k in sums else v.item() / dist.get_world_size() for k, v in zip(keys, vals)})
    return out


def global_explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """``core.explained_variance`` over the counted elements of every rank together, 1 - Var[G - V] / Var[G]
    from the ranks' summed moments (a mean of per-rank values would weigh each rank's own spread instead);
    NaN where the returns have no variance. One process: ``explained_variance`` itself."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        from gradascent.core import explained_variance
        return float(explained_variance(values, returns, mask))
    w = mask.to(torch.float64)
    g, e = returns.to(torch.float64), (returns - values).to(torch.float64)
    n, g1, g2, e1, e2 = global_count(torch.stack([w.sum(), (w * g).sum(), (w * g * g).sum(), (w * e).sum(),
                                                  (w * e * e).sum()])).tolist()
    n = max(n, 1.0)
    var_ret, var_err = g2 / n - (g1 / n) ** 2, e2 / n - (e1 / n) ** 2
    return 1.0 - var_err / var_ret if var_ret > 0 else float("nan")


def gather_list(items: list[T]) -> list[T]:
    """Every rank's ``items`` concatenated in rank order (``items`` itself for one process). Items are
    pickled: move tensors to the CPU first."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return items
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, items)
    return [x for part in parts for x in part]


def any_rank(flag: bool) -> bool:
    """True on every rank if ``flag`` is True on any rank."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([1.0 if flag else 0.0])
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# --- the training module: DDP or FSDP2 --------------------------------------------------------------------


def wrap(lm: nn.Module, fsdp: bool = False) -> nn.Module:
    """The training forward as the trainer calls it: ``lm`` itself for one process; under torchrun ``lm`` in
    ``DistributedDataParallel``, or, with ``fsdp``, ``lm`` sharded in place by FSDP2.

    FSDP2 shards each decoder layer (the classes a ``transformers`` model lists in ``_no_split_modules``:
    Qwen2DecoderLayer, LlamaDecoderLayer...) and then ``lm`` itself, which holds the rest (embeddings, final
    norm, LM head, tied or not). Every parameter of the model becomes a DTensor holding this rank's shard, so
    the optimizer must be built after this call. A forward through ``lm`` gathers one layer at a time; code
    that reads the model's weights without calling ``lm`` (sampling, evaluation, saving) runs inside
    ``full_weights(lm)``.
    """
    if not info().enabled:
        if fsdp:
            print("gradascent: note: fsdp: one process holds the whole model; training it unsharded", file=sys.stderr)
        return lm
    device = next(lm.parameters()).device
    if not fsdp:
        return nn.parallel.DistributedDataParallel(lm, device_ids=[device.index] if device.type == "cuda" else None)
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    for block in decoder_blocks(lm):
        fully_shard(block, mesh=mesh)
    fully_shard(lm, mesh=mesh)
    return lm


def decoder_blocks(module: nn.Module) -> list[nn.Module]:
    """The modules of ``module`` whose class a ``transformers`` model names in ``_no_split_modules`` (its
    decoder layers); empty for a model that names none, which FSDP2 then shards as one unit."""
    names: set[str] = set()
    for m in module.modules():
        names.update(getattr(m, "_no_split_modules", None) or ())
    return [m for m in module.modules() if type(m).__name__ in names]


def is_sharded(module: nn.Module) -> bool:
    """True when ``module``'s parameters are FSDP2 shards (DTensors)."""
    return any(isinstance(p, DTensor) for p in module.parameters())


@contextlib.contextmanager
def full_weights(lm: nn.Module) -> Iterator[None]:
    """Every parameter of an FSDP2-sharded ``lm`` whole, on every rank, for the duration of the block; a
    no-op for a module that is not sharded.

    Inside the block the model's weights are plain tensors: the sampling engine reads them directly, and
    forwards of the model (or of its layers) gather nothing, so ranks may run different numbers of them.
    Every rank must enter and leave the block together (entering all-gathers). It costs one full copy of
    the weights for its duration; gradients and optimizer state stay sharded. ``state_dict()`` still returns
    shards (FSDP2 reshards for it): save with ``full_model_state``.
    """
    from torch.distributed.fsdp import FSDPModule

    if not isinstance(lm, FSDPModule):
        yield
        return
    # The root must be known before any layer runs a forward of its own (FSDP2 takes the first module to
    # run forward as the root), and layers must not reshard after those forwards.
    lm._get_fsdp_state()._lazy_init()
    sharded = [m for m in lm.modules() if isinstance(m, FSDPModule)]
    lm.set_reshard_after_forward(False)
    try:
        for m in sharded:
            m.unshard()
        yield
    finally:
        for m in sharded:
            m.reshard()
        # back to fully_shard's defaults: layers reshard after forward, the root (whose weights the
        # backward needs at once) does not
        lm.set_reshard_after_forward(True)
        lm.set_reshard_after_forward(False, recurse=False)


def full_model_state(model: nn.Module) -> dict[str, Any]:
    """``model.state_dict()`` with whole tensors: under FSDP2 (whose ``state_dict()`` holds shards) every rank
    must call it, rank 0 receives the tensors on the CPU and the other ranks an empty dict."""
    if not is_sharded(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    # Tied weights (an LM head sharing the embedding) arrive as separate CPU copies; make them one tensor
    # again, so that save_pretrained sees the tie and writes the weight once, as a one-process run does.
    names_of: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names_of.setdefault(id(p), []).append(name)
    for names in names_of.values():
        present = [n for n in names if n in state]
        for n in present[1:]:
            state[n] = state[present[0]]
    return state


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """``model.state_dict()`` and ``optimizer.state_dict()`` with whole tensors, whether or not ``model`` is
    sharded: the layout of a one-process run, which any number of processes resumes (``load_full_state``).

    For a sharded model every rank must call it (it gathers); rank 0 receives the tensors, on the CPU, and
    the other ranks empty dicts. The optimizer state keeps torch's own layout (state keyed by the position
    of the parameter in the optimizer's groups), not the parameter names of
    ``torch.distributed.checkpoint``.
    """
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    model_state = full_model_state(model)
    by_name = get_optimizer_state_dict(model, optimizer,
                                       options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not info().is_main:
        return {}, {}
    names = _param_names(model, optimizer)
    optim_state: dict[str, Any] = {"state": {}, "param_groups": []}
    for group, saved in zip(optimizer.param_groups, by_name["param_groups"]):
        ids = [names.index(n) for n in _group_names(model, group)]
        optim_state["param_groups"].append({**{k: v for k, v in saved.items() if k != "params"}, "params": ids})
        optim_state["state"].update({i: by_name["state"][names[i]] for i in ids if names[i] in by_name["state"]})
    return model_state, optim_state


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_state: dict[str, Any],
                    optim_state: dict[str, Any]) -> None:
    """Load what ``full_state`` returned (read by every rank) into ``model`` and ``optimizer``; a sharded
    model takes this rank's shard of each tensor."""
    if not is_sharded(model):
        model.load_state_dict(model_state)
        optimizer.load_state_dict(optim_state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, dict(model_state), options=options)  # it replaces the values it loads
    names = _param_names(model, optimizer)
    by_name = {
        "state": {names[int(i)]: v for i, v in optim_state["state"].items()},
        "param_groups": [{**g, "params": [names[int(i)] for i in g["params"]]} for g in optim_state["param_groups"]],
    }
    set_optimizer_state_dict(model, optimizer, by_name, options=options)


def _group_names(model: nn.Module, group: dict[str, Any]) -> list[str]:
    name_of = {id(p): n for n, p in model.named_parameters()}
    return [name_of[id(p)] for p in group["params"]]


def _param_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter of ``optimizer``, in torch's order (group by group)."""
    return [n for group in optimizer.param_groups for n in _group_names(model, group)]
