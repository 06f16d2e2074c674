"""The critic's explained variance that PPO-RLHF logs under DDP is that of all ranks' tokens together.

Rank 0 holds a perfect critic on returns 1, 2, 3 (its own explained variance 1); rank 1 a critic predicting
0 for returns 10 and 20 (its own 0; a third token is padding, with a value and a return that must not count).
Over the five counted tokens: G = 1, 2, 3, 10, 20 (mean 7.2, Var 514 / 5 - 7.2^2 = 50.96) and G - V = 0, 0, 0,
10, 20 (mean 6, Var 500 / 5 - 36 = 64), so 1 - 64 / 50.96 = -0.2559, where the mean of the ranks' own values
would be 0.5.
"""

import math

import pytest
import torch

from _group import join, run_ranks
from gradascent.core import explained_variance
from gradascent.run import distributed

pytestmark = pytest.mark.xdist_group("dist")

VALUES = [torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[0.0, 0.0, 7.0]])]
RETURNS = [torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([[10.0, 20.0, -40.0]])]
MASKS = [torch.tensor([[True, True, True]]), torch.tensor([[True, True, False]])]


def _rank(rank: int, world: int, port: int, result: dict) -> None:
    join(rank, world, port)
    result[rank] = distributed.global_explained_variance(VALUES[rank], RETURNS[rank], MASKS[rank])
    distributed.cleanup()


def test_explained_variance_is_over_all_ranks_tokens():
    expected = 1 - 64 / 50.96
    one_process = [distributed.global_explained_variance(v, g, m) for v, g, m in zip(VALUES, RETURNS, MASKS)]
    assert one_process == [1.0, 0.0]  # without a process group: each rank's own, as explained_variance gives
    together = explained_variance(torch.cat(VALUES, 1), torch.cat(RETURNS, 1), torch.cat(MASKS, 1)).item()
    assert together == pytest.approx(expected, rel=1e-6)
    result = run_ranks(_rank)
    assert result[0] == result[1] == pytest.approx(expected, rel=1e-9)
    assert not math.isclose(result[0], sum(one_process) / 2)
