"""The run directory contract shared by every trainer.

    OUT/config.yaml      the resolved config (every field, defaults included)
    OUT/run.json         which config class (hence which trainer) wrote the run, for `gradascent resume`
    OUT/metrics.jsonl    one JSON object per logged step: {"step": k, <counters>, <metrics>}
    OUT/summary.json     the final figures
    OUT/checkpoints/     step_XXXXXXXX/ directories written atomically (run.checkpoint)
    OUT/tb/              TensorBoard event files with the same scalars as metrics.jsonl

On resume, ``truncate_metrics(step)`` drops the lines logged after the checkpoint, so that the resumed run's
log is the log of a run that never stopped; its TensorBoard writer starts with a purge at step + 1, so that
TensorBoard also drops the earlier process's scalars after the checkpoint instead of drawing both. A run that
starts over (``clear_metrics``) removes both logs of the earlier attempt.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from gradascent.errors import ConfigError, GradascentError
from gradascent.run.checkpoint import checkpoint_step, latest_checkpoint
from gradascent.run.config import describe_changes, read_yaml, renamed, save_yaml, to_dict


_SINGLE = frozenset({"float32", "float16", "bfloat16", "torch.float32", "torch.float16", "torch.bfloat16"})


def _jsonable(v: Any) -> Any:
    """A JSON-ready value. A float32 (or narrower) tensor or NumPy scalar is written as the shortest decimal
    that reads back as the same float32: 0.02, not 0.019999999552965164, its exact value as a Python float.
    A Python float is written as it is (it may be an exact float64 such as a halved beta, 2**-12)."""
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    single = str(getattr(v, "dtype", "")) in _SINGLE
    if hasattr(v, "item") and callable(v.item):  # torch / numpy scalars
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    if single and isinstance(v, float):
        v = float(str(np.float32(v)))  # NumPy prints a float32 at its shortest round-tripping decimal
    return v


def require_path(path: str | Path, what: str = "directory") -> None:
    """A GradascentError unless ``path`` can be (or is) a directory: an empty path (``Path("")`` is the
    current directory, which would silently take the run), or a file where it or one of its parents should
    be. Trainers call it first, so that such an ``out`` stops them before they load anything."""
    if not isinstance(path, (str, os.PathLike)):
        raise GradascentError(f"the {what} (out) must be a path such as runs/NAME, got {type(path).__name__}")
    if isinstance(path, str) and not path.strip():
        raise GradascentError(f"the {what} (out) is empty; give a path such as runs/NAME")
    p = Path(path)
    for part in (p, *p.parents):
        try:
            exists = part.exists()
        except OSError:  # an impossible name (too long, ...): make_dir's mkdir says what is wrong with it
            return
        if exists:
            if not part.is_dir():
                at = "" if part == p else f" at {part}"
                raise GradascentError(f"cannot create {what} {p}: a file is in the way (a directory is needed){at}")
            return


def make_dir(path: str | Path, what: str = "directory") -> Path:
    """``mkdir -p path``, or a GradascentError naming ``path`` (a file in the way, no permission, ...)."""
    require_path(path, what)
    p = Path(path)
    try:
        p.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise GradascentError(f"cannot create {what} {p}: a file is in the way (a directory is needed)") from None
    except OSError as exc:
        raise GradascentError(f"cannot create {what} {p}: {exc.strerror or exc}") from None
    return p


class RunDir:
    """Writes config.yaml, metrics.jsonl, summary.json, checkpoints/ and TensorBoard events under ``path``."""

    FILES = ("config.yaml", "run.json", "metrics.jsonl", "summary.json")
    DIRS = ("checkpoints", "tb")

    def __init__(self, path: str | Path, tensorboard: bool = True, files: tuple[str, ...] = (),
                 dirs: tuple[str, ...] = ()) -> None:
        """``files`` and ``dirs``: what the trainer writes there besides the contract's own entries (such as
        the final model/), checked with them up front, so that a directory or a file in the way of one stops
        the run before it trains, not when it saves."""
        self.path = make_dir(path, "run directory")  # the path as given, so that an empty string is refused
        for name in self.DIRS + dirs:  # checkpoints/ is made by the first checkpoint; none with save_every 0
            require_path(self.path / name, "run directory")
        for name in self.FILES + files:
            if (self.path / name).is_dir():
                raise GradascentError(f"cannot write {self.path / name}: a directory is in the way (a file is "
                                      "needed)")
        self._tb_enabled = tensorboard
        self._tb: Any = None
        self._purge_step: int | None = None  # set by truncate_metrics: where the resumed log takes over

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def write_config(self, cfg: Any, fields: dict[str, Any] | None = None) -> None:
        """Write config.yaml (``cfg``'s fields, or ``fields`` in their place) and run.json (which config class,
        hence which trainer, made this run)."""
        save_yaml(cfg if fields is None else fields, self.path / "config.yaml")
        meta = {"config_class": f"{type(cfg).__module__}:{type(cfg).__qualname__}"}
        (self.path / "run.json").write_text(json.dumps(meta) + "\n", encoding="utf-8")

    def log(self, step: int, metrics: dict[str, Any]) -> dict[str, Any]:
        """Append one line {"step": step, **metrics} to metrics.jsonl and the TensorBoard scalars."""
        row = {"step": int(step), **{k: _jsonable(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self._tb_enabled:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(self.path / "tb"), purge_step=self._purge_step)
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, int(step))
        return row

    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        rows = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut by a kill: everything after it is lost with it
                if not isinstance(row, dict):  # not a row this library wrote: damaged from there on, as above
                    break
                rows.append(row)
        return rows

    def truncate_metrics(self, last_step: int) -> None:
        """Keep only the rows with step <= last_step (and drop a half-written last line); TensorBoard drops the
        earlier scalars after last_step when this run writes its first."""
        rows = [r for r in self.read_metrics() if r.get("step", 0) <= last_step]
        tmp = self.metrics_path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, self.metrics_path)
        self._purge_step = int(last_step) + 1

    def clear_metrics(self) -> None:
        """Remove metrics.jsonl and the TensorBoard event files of an earlier attempt: a run starting over."""
        self.metrics_path.unlink(missing_ok=True)
        tb = self.path / "tb"
        if tb.is_dir():
            for f in tb.glob("events.out.tfevents.*"):
                f.unlink()
        self._purge_step = None

    def write_summary(self, summary: dict[str, Any]) -> None:
        tmp = self.path / "summary.json.tmp"
        tmp.write_text(json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, self.path / "summary.json")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def check_not_past(checkpoint: Path | None, steps: int, key: str = "steps", cfg: Any = None) -> None:
    """A resumed run may be given more ``steps`` (or as many), not fewer than its newest checkpoint has done:
    it would end at the checkpoint anyway, with a config.yaml that no longer says what the run did. Called
    before config.yaml is written. With ``cfg``, the run directory of ``checkpoint`` must first hold a run of
    ``cfg``'s class (``check_run_kind``): another trainer's run is named as that, not as too few steps."""
    if checkpoint is not None and cfg is not None:
        check_run_kind(Path(checkpoint).parent.parent, cfg)
    done = checkpoint_step(checkpoint) if checkpoint is not None else 0
    if done > steps:
        raise ConfigError(f"{key}={steps} is fewer than the {done} the run has done already (checkpoint "
                          f"{checkpoint}); resume it with {key} >= {done}")


def _config_class(path: Path) -> str | None:
    """The config class run.json names, or None where there is none to read."""
    try:
        made_by = json.loads((path / "run.json").read_text(encoding="utf-8")).get("config_class")
    except (OSError, ValueError, AttributeError):
        return None
    return made_by if isinstance(made_by, str) else None


def check_run_kind(path: str | Path, cfg: Any) -> None:
    """A ConfigError where the run directory ``path`` holds a run of another config class than ``cfg``'s
    (run.json names it); nothing where it holds none or one of the same class."""
    made_by, this = _config_class(Path(path)), f"{type(cfg).__module__}:{type(cfg).__qualname__}"
    if made_by is not None and made_by != this:
        raise ConfigError(f"{path} holds a run of {made_by.rsplit(':', 1)[-1]} (run.json), not of "
                          f"{type(cfg).__name__}; continue it with `gradascent resume {path}`, or choose another "
                          "'out'")


def check_resume(run: RunDir, cfg: Any, resuming: bool, resume_requested: bool, may_change: frozenset[str]) -> None:
    """Refuse to start over an existing run, or to resume one under a different config.

    Without ``resuming``, a run directory that already holds metrics is an error unless the user asked to
    resume (``resume_requested``: then the run stopped before its first checkpoint and starts over). When
    ``resuming``, every config field outside ``may_change`` must equal the one in the run's config.yaml.
    """
    if not resuming:
        if run.read_metrics() and not resume_requested:
            if latest_checkpoint(run.checkpoints) is None:
                raise ConfigError(f"{run.path} holds a run that stopped before its first checkpoint (metrics.jsonl, "
                                  "no checkpoint); pass --resume (resume=True from Python) to start it over, or "
                                  "choose another run directory")
            raise ConfigError(f"{run.path} already holds a run (metrics.jsonl); pass --resume (resume=True from "
                              "Python) to continue it, or choose another run directory")
        return
    check_run_kind(run.path, cfg)
    saved_path = run.path / "config.yaml"
    if not saved_path.is_file():
        return
    saved, now = renamed(read_yaml(saved_path)), to_dict(cfg)
    changed = sorted(k for k in now if k not in may_change and saved.get(k) != now[k])
    if changed:
        raise ConfigError(f"{run.path} holds a run with another config ({describe_changes(changed, saved, now)}); resume it with "
                          "the same config, or choose another 'out'")
