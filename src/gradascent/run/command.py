"""The end of every training command: print one line on the main process, the exit status for a stop."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

from gradascent.run import distributed

STOPPED = 130  # exit status of a run stopped by a signal (128 + SIGINT), with a checkpoint to resume from


def finish(name: str, summary: dict[str, Any], line: Callable[[dict[str, Any]], str]) -> int:
    """Leave the process group, then, on the main process only, print ``line(summary)`` (or, for a run stopped
    by a signal, its ``summary['stopped']`` message on stderr); returns the command's exit status."""
    is_main = distributed.info().is_main
    distributed.cleanup()
    if "stopped" in summary:
        if is_main:
            print(f"gradascent {name}: {summary['stopped']}", file=sys.stderr)
        return STOPPED
    if is_main:
        print(line(summary))
    return 0
