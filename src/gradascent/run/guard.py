"""What keeps a run alive: a non-finite guard and a stop request on SIGTERM / Ctrl-C.

``NonFiniteGuard``: a loss or gradient that is NaN or inf skips the optimizer step (the trainer zeroes the
gradients instead), is counted and logged, and after ``max_consecutive`` in a row the run aborts with
``NonFiniteError``; the last checkpoint, which was written from finite state, stays intact.

``StopOnSignal``: while active, SIGTERM and SIGINT only set ``requested``; the trainer checks it at a step
boundary, writes a checkpoint and leaves with a clear message. A second signal exits at once.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterable
from types import FrameType
from typing import Any

import torch
from torch.distributed.tensor import DTensor

from gradascent.errors import NonFiniteError
from gradascent.run.distributed import any_rank


def grads_finite(params: Iterable[torch.nn.Parameter]) -> bool:
    """True when every gradient present is finite (one fused reduction, one sync).

    Of a gradient sharded by FSDP2 (a DTensor) only this rank's shard is read: no communication here, and
    ranks may disagree (``NonFiniteGuard.check`` makes them agree)."""
    norms = [_local(p.grad).detach().norm() for p in params if p.grad is not None]
    if not norms:
        return True
    return bool(torch.isfinite(torch.stack(norms).sum()))


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


class NonFiniteGuard:
    """Counts consecutive non-finite updates; raises after ``max_consecutive`` of them."""

    def __init__(self, max_consecutive: int = 5) -> None:
        self.max_consecutive = max_consecutive
        self.consecutive = 0
        self.skipped = 0

    def check(self, loss: torch.Tensor, params: Iterable[torch.nn.Parameter], where: str = "") -> bool:
        """True if the update may proceed; False (and counted) if the loss or a gradient is not finite."""
        params = list(params)
        ok = bool(torch.isfinite(loss.detach()).all()) and grads_finite(params)
        if any(isinstance(p.grad, DTensor) for p in params):
            # Sharded gradients: each rank saw its shard only, and all must skip or step together.
            ok = not any_rank(not ok)
        if ok:
            self.consecutive = 0
            return True
        self.consecutive += 1
        self.skipped += 1
        if self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"{self.consecutive} consecutive updates had a non-finite loss or gradient{' at ' + where if where else ''}; "
                "stopping (the last checkpoint is intact). Lower the learning rate or check the rewards.")
        return False

    def state_dict(self) -> dict[str, int]:
        return {"consecutive": self.consecutive, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consecutive = int(state["consecutive"])
        self.skipped = int(state["skipped"])


class StopOnSignal:
    """Context manager: SIGTERM / SIGINT request a clean stop at the next step boundary."""

    def __init__(self) -> None:
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested is not None:  # second signal: give up at once
            sys.exit(128 + signum)
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> "StopOnSignal":
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay with their owner
                pass
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._old.items():
            signal.signal(sig, handler)
        self._old.clear()
