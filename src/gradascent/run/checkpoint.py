"""Atomic checkpoints: every tensor in one safetensors file, everything else in JSON; no pickle.

A checkpoint is a directory ``checkpoints/step_XXXXXXXX/`` holding

    tensors.safetensors   every tensor of the state (weights, optimizer moments, RNG states...)
    state.json            the rest of the state, with {"__tensor__": key} where a tensor was

It is written under a temporary name and renamed into place, so a kill at any moment leaves the newest
*complete* checkpoint intact; ``latest_checkpoint`` only ever sees complete ones. A state holding a
non-finite float tensor is refused, so NaN never reaches disk.

Saving a step that exists already (after a resume) moves the old one aside (``.old-step_N-PID``) before
renaming the new one in; a kill between the two renames leaves the old one there, complete, and
``list_checkpoints`` counts it as step N. What a killed save leaves behind (``.tmp-*``, ``.old-*`` of
another process) is removed by the next save into the directory, after its own checkpoint is in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from gradascent.errors import CheckpointError, ConfigError, GradascentError, NonFiniteError
from gradascent.run.files import save_tensors

PREFIX = "step_"


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = path or "root"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        key = path or "root"
        tensors[key] = torch.from_numpy(np.ascontiguousarray(obj)).clone()
        return {"__ndarray__": key}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {k: _encode(v, tensors, f"{path}.{k}" if path else k) for k, v in obj.items()}
        return {"__items__": [[k, _encode(v, tensors, f"{path}.{k}" if path else str(k))] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__} at '{path}'")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__ndarray__" in obj:
            return tensors[obj["__ndarray__"]].numpy()
        if "__items__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
        return {k: _decode(v, tensors) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    return obj


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:08d}"


def checkpoint_step(path: str | Path) -> int:
    """The step of checkpoint directory ``path``, read from its name (step_00000012 -> 12; a checkpoint moved
    aside by a killed save, .old-step_00000012-PID, -> 12 as well)."""
    name = Path(path).name
    aside = _leftover_step(name)
    return aside if aside is not None else int(name[len(PREFIX):])


def save_checkpoint(directory: str | Path, step: int, state: dict[str, Any], keep_last: int | None = None) -> Path:
    """Write ``state`` (nested dicts/lists of tensors, arrays and JSON values) as checkpoint ``step``.

    Returns the checkpoint's path. Raises NonFiniteError, writing nothing, if a float tensor holds NaN/inf.
    Keeps only the ``keep_last`` newest checkpoints when given.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    meta = _encode(state, tensors, "")
    key = _nonfinite(tensors)
    if key is not None:
        raise NonFiniteError(f"refusing to checkpoint step {step}: tensor '{key}' holds NaN or inf")
    final = directory / checkpoint_name(step)
    tmp = directory / f".tmp-{checkpoint_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_tensors(tensors, tmp / "tensors.safetensors")
    with (tmp / "state.json").open("w", encoding="utf-8") as fh:
        json.dump({"step": step, "state": meta}, fh)
        fh.flush()
        os.fsync(fh.fileno())
    with (tmp / "tensors.safetensors").open("rb") as fh:
        os.fsync(fh.fileno())
    if final.exists():  # the same step saved again (after a resume): swap atomically-enough
        old = directory / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(directory)
    _remove_leftovers(directory)
    if keep_last is not None and keep_last > 0:
        for old_ckpt in list_checkpoints(directory)[:-keep_last]:
            shutil.rmtree(old_ckpt, ignore_errors=True)
    return final


def _leftover_step(name: str) -> int | None:
    """The step of a ``.tmp-step_N-PID`` / ``.old-step_N-PID`` name; None for any other name."""
    for lead in (".tmp-", ".old-"):
        if name.startswith(lead + PREFIX):
            digits, _, pid = name[len(lead) + len(PREFIX):].partition("-")
            if digits.isdigit() and pid.isdigit():
                return int(digits)
    return None


def _remove_leftovers(directory: Path) -> None:
    """Tidy what killed saves left (every ``.tmp-*`` and ``.old-*`` checkpoint directory but this process's):
    a complete checkpoint moved aside whose step has no directory goes back to its name; the rest is removed."""
    own = f"-{os.getpid()}"
    for p in list(directory.iterdir()):
        step = _leftover_step(p.name)
        if step is None or not p.is_dir() or p.name.endswith(own):
            continue
        home = directory / checkpoint_name(step)
        if p.name.startswith(".old-") and _complete(p) and not home.exists():
            os.replace(p, home)
        else:
            shutil.rmtree(p, ignore_errors=True)


def _complete(p: Path) -> bool:
    return p.is_dir() and (p / "state.json").exists() and (p / "tensors.safetensors").exists()


def list_checkpoints(directory: str | Path) -> list[Path]:
    """Complete checkpoints under ``directory``, oldest first: the ``step_N`` directories, and for a step N
    whose directory a save killed mid-swap left missing, the complete ``.old-step_N-PID`` it moved aside."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found: dict[int, Path] = {}
    aside: dict[int, Path] = {}
    for p in directory.iterdir():
        if p.name.startswith(PREFIX) and p.name[len(PREFIX):].isdigit():
            if _complete(p):
                found[int(p.name[len(PREFIX):])] = p
        elif p.name.startswith(".old-") and (step := _leftover_step(p.name)) is not None and _complete(p):
            aside[step] = p
    for step, p in aside.items():
        found.setdefault(step, p)
    return [found[k] for k in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    ckpts = list_checkpoints(directory)
    return ckpts[-1] if ckpts else None


def load_checkpoint(path: str | Path) -> tuple[int, dict[str, Any]]:
    """Read a checkpoint written by ``save_checkpoint``; returns (step, state). Corruption is a CheckpointError."""
    path = Path(path)
    try:
        with (path / "state.json").open(encoding="utf-8") as fh:
            meta = json.load(fh)
        tensors = load_file(str(path / "tensors.safetensors"))
        key = _nonfinite(tensors)
        if key is not None:  # never written so by save_checkpoint: damaged since
            raise CheckpointError(f"checkpoint {path} is corrupt: tensor '{key}' holds NaN or inf, which "
                                  "save_checkpoint never writes")
        state = _decode(meta["state"], tensors)
        if not isinstance(state, dict):
            raise TypeError(f"its state is a {type(state).__name__}, not an object")
        return int(meta["step"]), CheckpointState(state, path)
    except FileNotFoundError as exc:
        raise CheckpointError(f"checkpoint {path} is incomplete: {Path(exc.filename).name} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt: {type(exc).__name__}: {exc}") from None
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated: {exc}") from None


def _nonfinite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The name of the first float tensor holding NaN or inf, or None."""
    return next((k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())), None)


def data_fingerprint(rows: Any) -> str:
    """A short hash of a run's data (rows, as JSON), kept in its checkpoints so that a resume on other data
    (a task file edited since the run started) is refused rather than trained on without a word."""
    text = json.dumps(rows, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def check_data_fingerprint(state: dict[str, Any], fingerprint: str, what: str, checkpoint: str | Path) -> None:
    """A ConfigError where ``state`` (a checkpoint's) records other data than ``fingerprint``; nothing for a
    checkpoint written before fingerprints were kept."""
    saved = state.get("data_fingerprint")
    if saved is not None and saved != fingerprint:
        raise ConfigError(f"{what} differ from the data the run was trained on up to checkpoint {checkpoint} (the "
                          "file changed since); resume on the same data, or start a new run in another directory")


@contextlib.contextmanager
def restoring(path: str | Path) -> Iterator[None]:
    """Around a trainer's use of a checkpoint's state: a value that is not what the trainer saved (a counter
    that is no number, a tensor of another shape for the model's load_state_dict) is a CheckpointError naming
    the checkpoint, not a traceback from the middle of the restore. The library's own errors pass through."""
    try:
        yield
    except GradascentError:
        raise
    except (ValueError, TypeError, RuntimeError, KeyError, IndexError, AttributeError) as exc:
        detail = " ".join(str(exc).split())
        detail = detail if len(detail) <= 300 else detail[:297] + "..."
        raise CheckpointError(f"checkpoint {path} is corrupt or not this run's: {type(exc).__name__}: "
                              f"{detail}") from None


class CheckpointState(dict):  # type: ignore[type-arg]
    """A checkpoint's state: a dict whose missing key is a CheckpointError naming the checkpoint and the key
    (a state.json that parses but lacks what the trainer saved: damaged, or written by another trainer)."""

    def __init__(self, state: dict[str, Any], path: Path) -> None:
        super().__init__(state)
        self.path = path

    def __missing__(self, key: str) -> Any:
        raise CheckpointError(f"checkpoint {self.path} is corrupt: its state.json has no {key!r} (damaged, or "
                              "written by another trainer)")


# --- random number generators ------------------------------------------------------------------------


def capture_rng() -> dict[str, Any]:
    """The global RNG states of python, numpy and torch (and CUDA when present), checkpointable."""
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of ``capture_rng``."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))  # type: ignore[arg-type]
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
