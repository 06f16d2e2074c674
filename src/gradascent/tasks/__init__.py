"""Built-in tasks and task files: datasets of text rows plus the reward functions that judge completions.

``load_task(spec)`` returns a ``Task`` for a built-in name or a JSONL file:

    arithmetic   rows {"prompt": "47+38=", "answer": "85"}; rewards exact_match (1.0) + format_number (0.1)
    preference   rows {"prompt", "chosen", "rejected"} from a hidden rule; reward preference_reward (the rule)
    FILE.jsonl   rows as in ``tasks.data``; an answer file gets the arithmetic rewards, the others none (a file
                 of prompts alone is for reward functions of one's own)

Reward functions are plain callables ``(prompts, completions, **columns) -> list[float]`` (see
``gradascent.rewards``); a row's other fields are the columns. ``sft_example`` turns any row into the
(prompt, completion) pair SFT trains on.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gradascent.errors import ConfigError, DataError
from gradascent.tasks.arithmetic import arithmetic_dataset, exact_match, format_number
from gradascent.tasks.data import FORMATS, load_rows_lines, read_jsonl_lines
from gradascent.tasks.preference import preference_pairs, preference_prompts, preference_reward, preference_score

RewardFn = Callable[..., Sequence[float]]
TaskKind = Literal["answer", "completion", "preference", "prompt"]


@dataclass(frozen=True)
class Task:
    """A dataset split in train/eval rows, with the reward functions that score its completions.

    Attributes:
        name: the built-in name or the file path.
        kind: 'answer' | 'completion' | 'preference' | 'prompt' (the row format, ``tasks.data.FORMATS``).
        train, eval: rows (dicts with at least "prompt").
        reward_fns, reward_weights: the task's rewards and their weights (empty for plain demonstrations).
        max_new_tokens: a completion budget, in characters of the built-in tokenizer, that fits the task.
        sources: where each row came from, per split ('train', 'eval'): 'file.jsonl:LINE' for a task file
            (``row_names`` falls back to '<name> <split> row <i>'), for errors that name the row at fault.
    """

    name: str
    kind: TaskKind
    train: list[dict[str, Any]]
    eval: list[dict[str, Any]]
    reward_fns: tuple[RewardFn, ...] = ()
    reward_weights: tuple[float, ...] = ()
    max_new_tokens: int = 64
    info: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Rows a trainer can read: each a dict with a non-empty text 'prompt' (checked here, where a task built
        in Python enters, rather than as a KeyError or a tokenizer error mid-run)."""
        for split, rows in (("train", self.train), ("eval", self.eval)):
            if not isinstance(rows, list):
                raise DataError(f"task {self.name!r}: its {split} rows must be a list of dicts, got "
                                f"{type(rows).__name__}")
            for i, row in enumerate(rows):
                prompt = row.get("prompt") if isinstance(row, dict) else None
                if not isinstance(prompt, str) or not prompt:
                    what = ("not a dict" if not isinstance(row, dict) else "no 'prompt' field"
                            if "prompt" not in row else f"prompt {prompt!r}, not a non-empty string")
                    raise DataError(f"task {self.name!r}: {split} row {i} has {what} ({row!r:.80})")
        # Sources that do not name each row of their split (a task copied with other rows, as
        # dataclasses.replace(task, train=subset) does) are dropped: the rows are then named by number.
        rows_of = {"train": self.train, "eval": self.eval}
        kept = {split: list(names) for split, names in self.sources.items()
                if split in rows_of and len(names) == len(rows_of[split])}
        if kept != self.sources:
            object.__setattr__(self, "sources", kept)
        if len(self.reward_weights) not in (0, len(self.reward_fns)):
            raise DataError(f"task {self.name!r}: {len(self.reward_weights)} reward weights for "
                            f"{len(self.reward_fns)} reward functions")
        if self.kind not in FORMATS:
            raise DataError(f"task {self.name!r}: kind {self.kind!r} is none of {', '.join(FORMATS)}")
        for fn in self.reward_fns:
            if not callable(fn):
                raise DataError(f"task {self.name!r}: reward function {fn!r} is not callable (a Task holds "
                                "functions; gradascent.rewards.resolve_reward turns a name such as "
                                "'exact_match' into one)")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise DataError(f"task {self.name!r}: max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        for w in self.reward_weights:
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                raise DataError(f"task {self.name!r}: reward weight {w!r} is not a finite number")


def row_names(task: Task, split: str) -> list[str]:
    """Where each row of ``split`` ('train' | 'eval') came from: ``task.sources`` (file:line), or else
    '<task> <split> row <i>' counted from 1."""
    rows = task.train if split == "train" else task.eval
    return task.sources.get(split) or [f"{task.name} {split} row {i}" for i in range(1, len(rows) + 1)]


def describe_rows(task: Task) -> str:
    """'<kind> rows with fields a, b, c': what a task's rows hold, for error messages."""
    first = (task.train or task.eval or [{}])[0]
    return f"{task.kind} rows with fields {', '.join(sorted(first))}"


def sft_example(row: dict[str, Any]) -> tuple[str, str]:
    """(prompt, completion) of a row: its 'completion', else its 'answer', else its 'chosen' text."""
    for key in ("completion", "answer", "chosen"):
        if key in row:
            return str(row["prompt"]), str(row[key])
    raise DataError(f"row {row!r:.80} has no completion, answer or chosen field to train on")


def arithmetic_task(n_train: int = 4000, n_eval: int = 200, seed: int = 0, max_operand: int = 99,
                    ops: str = "+-") -> Task:
    """The built-in arithmetic task; eval rows are drawn from another seed and never repeat a train prompt."""
    train = arithmetic_dataset(n_train, seed=seed, max_operand=max_operand, ops=ops)
    seen = {r["prompt"] for r in train}
    pool = arithmetic_dataset(4 * n_eval + 100, seed=seed + 1_000_003, max_operand=max_operand, ops=ops)
    evals = [r for r in pool if r["prompt"] not in seen][:n_eval]
    digits = len(str(max_operand * max_operand if "*" in ops else 2 * max_operand))
    return Task("arithmetic", "answer", train, evals, (exact_match, format_number), (1.0, 0.1),
                max_new_tokens=digits + 2, info={"max_operand": max_operand, "ops": ops})


def preference_task(n_train: int = 4000, n_eval: int = 200, seed: int = 0) -> Task:
    """The built-in preference task: pairs for reward modelling and SFT, scored by the hidden rule."""
    train = preference_pairs(n_train, seed=seed)
    evals = preference_pairs(n_eval, seed=seed + 1_000_003)
    return Task("preference", "preference", train, evals, (preference_reward,), (1.0,), max_new_tokens=48)


BUILTIN_TASKS: dict[str, Callable[..., Task]] = {"arithmetic": arithmetic_task, "preference": preference_task}


def split_rows(rows: list[dict[str, Any]], eval_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded shuffle-free split: every row goes to eval with probability ``eval_fraction``; at least one
    row stays in train, and eval gets one row when there are two or more."""
    rng = random.Random(seed)
    flags = [rng.random() < eval_fraction for _ in rows]
    if eval_fraction > 0 and len(rows) >= 2 and not any(flags):
        flags[-1] = True
    if all(flags):
        flags[0] = False
    train = [r for r, f in zip(rows, flags) if not f]
    evals = [r for r, f in zip(rows, flags) if f]
    return train, evals


def load_task(
    spec: str | os.PathLike[str],
    *,
    n_train: int | None = None,
    n_eval: int | None = None,
    seed: int = 0,
    eval_file: str | None = None,
    eval_fraction: float = 0.1,
) -> Task:
    """A built-in task by name, or a JSONL file.

    Args:
        spec: 'arithmetic', 'preference', or a path to a JSONL file.
        n_train, n_eval: sizes of a built-in task (defaults: 4000 and 200); ignored for files.
        seed: data seed of a built-in task, or of the train/eval split of a file.
        eval_file: a JSONL file of eval rows (same format) instead of splitting ``spec``.
        eval_fraction: share of a file's rows held out for eval when ``eval_file`` is not given.
    """
    spec = os.fspath(spec)
    if not 0.0 <= eval_fraction < 1.0:
        raise ConfigError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if spec in BUILTIN_TASKS:
        if eval_file is not None:
            raise ConfigError(f"eval_file applies to a JSONL task; the built-in task '{spec}' draws its own eval rows "
                              "(set their number with n_eval)")
        for key, value, least in (("n_train", n_train, 1), ("n_eval", n_eval, 0)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise ConfigError(f"{key} must be an integer >= {least}, got {value!r}")
        sizes = {k: v for k, v in (("n_train", n_train), ("n_eval", n_eval)) if v is not None}
        return BUILTIN_TASKS[spec](seed=seed, **sizes)
    if not (spec.endswith(".jsonl") or spec.endswith(".json") or Path(spec).exists()):
        raise ConfigError(f"task {spec!r} is neither a built-in task ({', '.join(BUILTIN_TASKS)}) nor a JSONL file")
    kind, rows, lines = load_rows_lines(spec)
    located = [(row, f"{spec}:{line}") for row, line in zip(rows, lines)]
    if eval_file is not None:
        eval_rows, eval_lines = read_jsonl_lines(eval_file, required=FORMATS[kind], same_fields=True)
        train_located, eval_located = located, [(r, f"{eval_file}:{n}") for r, n in zip(eval_rows, eval_lines)]
    else:
        train_located, eval_located = split_rows(located, eval_fraction, seed)
    train, evals = [r for r, _ in train_located], [r for r, _ in eval_located]
    sources = {"train": [w for _, w in train_located], "eval": [w for _, w in eval_located]}
    fns: tuple[RewardFn, ...] = (exact_match, format_number) if kind == "answer" else ()
    weights: tuple[float, ...] = (1.0, 0.1) if kind == "answer" else ()
    # completion budget: twice the longest target text, or 64 tokens where the rows hold only prompts
    budget = max(8, 2 * max(len(sft_example(r)[1]) for r in rows)) if kind != "prompt" else 64
    return Task(spec, kind, train, evals, fns, weights, max_new_tokens=budget,  # type: ignore[arg-type]
                sources=sources)


__all__ = [
    "BUILTIN_TASKS",
    "Task",
    "arithmetic_dataset",
    "arithmetic_task",
    "describe_rows",
    "exact_match",
    "format_number",
    "load_task",
    "preference_pairs",
    "preference_prompts",
    "preference_reward",
    "preference_score",
    "row_names",
    "preference_task",
    "sft_example",
    "split_rows",
]
