"""Non-finite guard and signal-driven stop."""

import os
import signal

import pytest
import torch

from gradascent.errors import NonFiniteError
from gradascent.run.guard import NonFiniteGuard, StopOnSignal


def test_guard_skips_then_aborts_after_k_consecutive():
    p = torch.nn.Parameter(torch.ones(2))
    guard = NonFiniteGuard(max_consecutive=3)
    p.grad = torch.ones(2)
    assert guard.check(torch.tensor(1.0), [p])
    p.grad = torch.tensor([1.0, float("nan")])
    assert not guard.check(torch.tensor(1.0), [p])  # a NaN gradient: skip
    p.grad = torch.ones(2)
    assert not guard.check(torch.tensor(float("inf")), [p])  # an infinite loss: skip
    assert guard.check(torch.tensor(1.0), [p])  # a good step resets the count
    assert guard.state_dict() == {"consecutive": 0, "skipped": 2}
    bad = torch.tensor(float("nan"))
    assert not guard.check(bad, [p]) and not guard.check(bad, [p])
    with pytest.raises(NonFiniteError, match="3 consecutive updates"):
        guard.check(bad, [p], where="update 7")


def test_sigterm_sets_a_stop_request_and_handlers_are_restored():
    before = signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop:
        assert stop.requested is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested == "SIGTERM"
    assert signal.getsignal(signal.SIGTERM) is before
