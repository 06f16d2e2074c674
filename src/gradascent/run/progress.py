"""Progress bars shared by the trainers: tqdm on stderr, off when stderr is not a terminal."""

from __future__ import annotations

import sys
from typing import Any

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, unit: str = "step", enabled: bool | None = None, **kw: Any) -> tqdm:
    """A bar over ``total`` units with ETA; ``enabled=None`` shows it only on a terminal."""
    disable = (not sys.stderr.isatty()) if enabled is None else (not enabled)
    return tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, disable=disable, leave=False, **kw)
