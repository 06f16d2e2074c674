"""Global-token normalisation under DDP: ranks holding different numbers of tokens (2 gloo processes).

Rank 0 holds 3 loss tokens, rank 1 holds 1. The gradient of the global token mean over all 4 tokens,
computed in one process, must equal the DDP-averaged gradient when each rank divides its local token sum
by (global tokens / world size). Dividing by the local count instead (the naive per-rank mean) gives a
different gradient, which the test also checks, so the test can fail.
"""

import os

import pytest
import torch
import torch.multiprocessing as mp

from gradascent.core import aggregate
from gradascent.run import distributed
from _group import free_port

pytestmark = pytest.mark.xdist_group("dist")

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0], [1.0, -1.0, 2.0]])
MASKS = [torch.tensor([[True, True], [True, False]]), torch.tensor([[True, False], [False, False]])]



def _rank_grad(rank: int, world: int, port: int, out: dict, naive: bool) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank))
    torch.set_num_threads(1)
    info = distributed.init("cpu")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    x = X[rank * 2:(rank + 1) * 2]  # (2 sequences, 3 features); each "token" sees the same features here
    per_token = ddp(x).expand(2, 2) * torch.tensor([[1.0, 2.0], [3.0, 4.0]])  # (B=2, T=2) token losses
    mask = MASKS[rank]
    if naive:
        loss = aggregate(per_token, mask, "token_mean")
    else:
        loss = aggregate(per_token, mask, "token_mean", num_tokens=distributed.loss_divisor(mask.sum()))
    loss.backward()
    out[rank] = model.weight.grad.clone()
    assert info.world_size == world
    distributed.cleanup()


def _ddp_grad(naive: bool) -> torch.Tensor:
    port = free_port()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_rank_grad, args=(2, port, out, naive), nprocs=2, join=True)
        g0, g1 = out[0], out[1]
    assert torch.equal(g0, g1)  # DDP leaves every rank with the same averaged gradient
    return g0


def test_global_token_mean_gradient_matches_single_process():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1, bias=False)
    per_token = model(X).expand(4, 2) * torch.tensor([[1.0, 2.0], [3.0, 4.0]] * 2)
    mask = torch.cat(MASKS)
    aggregate(per_token, mask, "token_mean").backward()
    single = model.weight.grad.clone()

    assert torch.allclose(_ddp_grad(naive=False), single, atol=1e-6)
    # The per-rank mean weighs rank 1's single token as much as rank 0's three: a different gradient.
    assert not torch.allclose(_ddp_grad(naive=True), single, atol=1e-3)
