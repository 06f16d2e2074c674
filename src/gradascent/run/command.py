"""The end of every training command: print one line on the main process, the exit status for a stop."""

from __future__ import annotations

import signal
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
        return stop_status(summary)
    if is_main:
        print(line(summary))
    return 0


def stop_message(summary: dict[str, Any]) -> str | None:
    """How a run stopped by a signal says so in its summary (``stopped``: the whole message; ``stopped_by``: the
    signal's name, beside ``steps``), or None for a run that went to its end."""
    if summary.get("stopped"):
        return str(summary["stopped"])
    if summary.get("stopped_by"):
        return f"stopped by {summary['stopped_by']} after step {summary.get('steps')}"
    return None


def summary_line(summary: dict[str, Any]) -> str:
    """The scalar entries of a summary as ``key=value`` pairs, floats to 4 significant digits."""
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()
                    if isinstance(v, (int, float, str)) and not isinstance(v, bool))


def stop_status(summary: dict[str, Any]) -> int:
    """The exit status of a run stopped by a signal: 128 + its number (130 for SIGINT, 143 for SIGTERM), or 130
    when the signal reached another process."""
    by = summary.get("stopped_by")
    return 128 + signal.Signals[by].value if by in signal.Signals.__members__ else STOPPED
