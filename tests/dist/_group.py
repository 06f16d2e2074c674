"""What every multi-process test shares: a free TCP port for the rendezvous, joining the process group, and
running a function on every rank with a shared dict for the results."""

import os
import socket
from typing import Any, Callable

import torch
import torch.multiprocessing as mp


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def join(rank: int, world: int, port: int) -> None:
    """Set the torchrun environment of process ``rank`` of ``world``, one thread, and join the gloo group."""
    from gradascent.run import distributed

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    distributed.init("cpu")


def run_ranks(fn: Callable[..., None], *args: Any, world: int = 2) -> dict:
    """Spawn ``fn(rank, world, port, *args, result)`` on ``world`` processes; returns ``result``, the dict the
    ranks wrote into (copied out of the manager)."""
    with mp.Manager() as manager:
        result = manager.dict()
        mp.spawn(fn, args=(world, free_port(), *args, result), nprocs=world, join=True)
        return dict(result)
