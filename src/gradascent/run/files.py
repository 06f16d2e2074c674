"""The mode of the weight files the library writes.

safetensors (0.8) creates its files with mode 0600 whatever the process's umask, while every other file of a
run directory or a saved model gets the usual mode (0644 under umask 022): another user, or a container running
as another user, could read ``policy.json`` or ``config.json`` but not the weights beside them. Every
safetensors file the library writes, itself or through ``save_pretrained``, gets the mode a new file of this
process gets.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from safetensors.torch import save_file


def new_file_mode() -> int:
    """0o666 less the process's umask: the mode ``open(path, "w")`` gives a new file."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: read by setting it, then put back at once
    os.umask(mask)
    return 0o666 & ~mask


def save_tensors(tensors: dict[str, Any], path: str | Path) -> None:
    """``safetensors.torch.save_file`` with the mode of any other new file."""
    save_file(tensors, str(path))
    os.chmod(path, new_file_mode())


def share_tensors(directory: str | Path) -> None:
    """Give the safetensors files in ``directory`` (and below) that safetensors left at 0600 the mode of any
    other new file; a mode set otherwise is left alone."""
    mode = new_file_mode()
    for f in Path(directory).rglob("*.safetensors"):
        if f.stat().st_mode & 0o777 == 0o600 and mode != 0o600:
            os.chmod(f, mode)
