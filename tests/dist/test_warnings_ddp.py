"""Under torchrun each of gradascent's warnings is shown by rank 0 alone: the ranks run the same checks on the
same config, and N copies of one line said nothing more (2 gloo processes)."""

import warnings

import pytest

from _group import join, run_ranks
from gradascent.run import distributed
from gradascent.run.schedule import warn_short_warmup

pytestmark = pytest.mark.xdist_group("dist")


def _rank(rank: int, world: int, port: int, result: dict) -> None:
    join(rank, world, port)
    with warnings.catch_warnings(record=True) as caught:
        warn_short_warmup(100, 10, 1e-3)  # longer warmup than run: a GradascentWarning
        warnings.warn("someone else's warning", UserWarning)  # not ours: every rank keeps it
    result[rank] = [str(w.message)[:30] for w in caught]
    distributed.cleanup()


def test_gradascent_warnings_are_shown_once_not_once_per_rank():
    result = run_ranks(_rank)
    assert result[0] == ["warmup_steps=100 is longer tha", "someone else's warning"]
    assert result[1] == ["someone else's warning"]
