"""Data parallelism on torch.distributed: launch with ``torchrun --nproc-per-node N``.

Nothing here is home-made communication: process groups come from ``torch.distributed`` (gloo on CPU;
NCCL for CUDA tensors on GPU, with gloo beside it for small CPU tensors), gradients are averaged by ``DistributedDataParallel`` (or sharded by FSDP2's
``fully_shard``). What this module adds is the bookkeeping every trainer needs:

- ``init()``: join the group that torchrun describes in the environment (a no-op for one process);
- ``shard(items)``: the slice of a global batch that this rank owns (contiguous, so groups stay whole);
- ``local_rows(n)``: the same for a batch that need not split evenly (the short last batch of an epoch), with
  the weight of this rank's loss;
- ``global_count(x)``: all-reduced sums, e.g. the number of loss tokens over all ranks. The loss on each
  rank is its local token sum over ``global_tokens / world_size``, so that DDP's *mean* of the ranks'
  gradients is the gradient of the global token mean, whatever number of tokens each rank holds;
- ``reduce_metrics``: means of scalar metrics over ranks, for logging on rank 0 only;
- ``gather_list``, ``any_rank``: every rank's results of a sharded evaluation, and one decision for all ranks
  (a stop requested by a signal that reached some ranks a step before the others).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

import torch
import torch.distributed as dist

from gradascent.errors import ConfigError

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


def init(device: str = "cpu") -> DistInfo:
    """Join the process group described by torchrun's environment; single-process runs need nothing."""
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


def reduce_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """Mean over ranks of every numeric metric (one all-reduce); other values are taken from this rank."""
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return metrics
    keys = [k for k, v in metrics.items() if isinstance(v, (int, float, torch.Tensor)) and not isinstance(v, bool)]
    vals = torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64)
    dist.all_reduce(vals, op=dist.ReduceOp.SUM)
    vals /= dist.get_world_size()
    out = dict(metrics)
    out.update({k: v.item() for k, v in zip(keys, vals)})
    return out


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
