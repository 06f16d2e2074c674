"""`gradascent resume DIR`: continue any run from its newest complete checkpoint.

The run directory says which config class made it (run.json); the trainer is the ``train`` function of the
module that defines that class, called with the saved config and ``resume=True``. A config with an ``out``
field gets DIR as its output directory, so a moved run directory resumes where it now is.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import json
import sys
from pathlib import Path
from typing import Any

from gradascent.errors import CheckpointError, ConfigError, GradascentError
from gradascent.run import distributed
from gradascent.run.checkpoint import latest_checkpoint
from gradascent.run.command import stop_message, stop_status, summary_line
from gradascent.run.config import load_config


TRAINER_PACKAGE = "gradascent.algos"  # run.json names a config class of one of its modules, which trains it


def resume_run(run_dir: str | Path) -> Any:
    """Resume the run in ``run_dir``; returns what its trainer's ``train`` returns (the summary)."""
    run_dir = Path(run_dir)
    meta_path = run_dir / "run.json"
    if (run_dir / "demo.json").is_file() and not meta_path.is_file():  # a demo: SFT then GRPO, each resumable
        return _resume_demo(run_dir)
    if not run_dir.exists():
        raise GradascentError(f"{run_dir} does not exist; give the run directory (the 'out') of a run to resume")
    if not meta_path.is_file():
        raise GradascentError(f"{run_dir} is not a run directory: run.json is missing")
    unknown = GradascentError(f"{meta_path} does not name a known gradascent trainer (its config_class is not "
                              f"the config class of a module of {TRAINER_PACKAGE})")
    try:
        module_name, _, cls_name = json.loads(meta_path.read_text(encoding="utf-8"))["config_class"].partition(":")
        if not module_name.startswith(TRAINER_PACKAGE + "."):  # nothing else is imported
            raise unknown
        module = importlib.import_module(module_name)
        cls = getattr(module, cls_name)
    except (ValueError, KeyError, ImportError, AttributeError, TypeError, UnicodeDecodeError):
        raise unknown from None
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise unknown
    # A chain of stages (rlhf) keeps no checkpoint of its own: each stage resumes from its own directory.
    if not getattr(module, "RESUMES_FROM_STAGES", False) and latest_checkpoint(run_dir / "checkpoints") is None:
        raise CheckpointError(f"{run_dir} has no complete checkpoint to resume from (it stopped before its first "
                              "one); start it over with the command that started it plus --resume")
    train = getattr(module, "train", None)
    if train is None or "resume" not in inspect.signature(train).parameters:
        raise GradascentError(f"the trainer of {cls_name} cannot resume runs")
    overrides = {"out": str(run_dir)} if any(f.name == "out" for f in dataclasses.fields(cls)) else None
    try:
        cfg = load_config(cls, run_dir / "config.yaml", overrides=overrides)
    except ConfigError as exc:  # a config.yaml edited since: say which file the message is about
        where = str(run_dir / "config.yaml")
        raise ConfigError(str(exc) if where in str(exc) else f"{where}: {exc}") from None
    kwargs: dict[str, Any] = {"resume": True}
    if "out" in inspect.signature(train).parameters:  # trainers that take the run directory as an argument
        kwargs["out"] = str(run_dir)
    return train(cfg, **kwargs)


def _resume_demo(run_dir: Path) -> dict[str, Any]:
    from gradascent.demo import DemoSettings, run_demo
    from gradascent.run.config import from_dict

    if (run_dir / "summary.json").is_file():  # finished: nothing to continue
        return dict(json.loads((run_dir / "summary.json").read_text(encoding="utf-8")))
    try:
        saved = json.loads((run_dir / "demo.json").read_text(encoding="utf-8"))
        seed, settings = int(saved["seed"]), from_dict(DemoSettings, saved["settings"])
    except (ValueError, KeyError, TypeError):
        raise GradascentError(f"{run_dir / 'demo.json'} is damaged; the demo cannot be continued") from None
    return run_demo(run_dir, seed, settings)


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("resume", parents=[common], help="continue a run from its newest complete checkpoint",
                       description="Continue the run in DIR from its newest complete checkpoint, with the config "
                                   "it was started with; the result equals a run that never stopped.")
    p.add_argument("run_dir", metavar="DIR")
    p.set_defaults(func=_cmd)


def _cmd(args: argparse.Namespace) -> int:
    """Resume, then say how the run ended, with the exit status of the command that started it: 0 at its end,
    128 + the signal's number (130 for Ctrl-C) when a signal stopped it again."""
    from gradascent.algos.classic import TrainingInterrupted

    again = f"continue with: gradascent resume {args.run_dir}"
    try:
        summary = resume_run(args.run_dir)
    except TrainingInterrupted as exc:
        print(f"gradascent resume: {exc}" + ("" if again in str(exc) else f" ({again})"), file=sys.stderr)
        return 128 + exc.signum
    if not isinstance(summary, dict):
        return 0
    is_main = distributed.info().is_main
    distributed.cleanup()
    stopped = stop_message(summary)
    if stopped is not None:
        if is_main:
            print(f"gradascent resume: {stopped.split(';')[0]}; {again}", file=sys.stderr)
        return stop_status(summary)
    if is_main:
        print(f"{args.run_dir}: finished. {summary_line(summary)}")
    return 0
