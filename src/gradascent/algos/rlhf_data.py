"""Data of the RLHF stages: preference pairs for the reward model, prompts for PPO, and their token batches.

Sources are the built-in tasks (``'preference'``: gradascent.tasks) or JSONL files read by
``gradascent.tasks.data.read_jsonl``: preference rows ``{"prompt", "chosen", "rejected"}`` with an optional
numeric ``margin``, and prompt rows ``{"prompt", ...}``.

A preference row whose two completions are identical carries no preference, and an empty completion gives
the reward model nothing to read: both are ``DataError``s naming the row.

Sequences are laid out as the sampler lays them out: prompt tokens, then completion tokens, then EOS (a
finished completion ends with it), with no special tokens added.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from gradascent.errors import DataError


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str
    rejected: str
    margin: float | None = None
    where: str = ""
    """Where the row came from ('file.jsonl:12' or 'preference train row 7'), for error messages."""


def check_pairs(pairs: list[PreferencePair]) -> list[PreferencePair]:
    """Refuse rows that cannot train a reward model; returns ``pairs``."""
    if not pairs:
        raise DataError("no preference pairs")
    for p in pairs:
        if not p.chosen or not p.rejected:
            which = "chosen" if not p.chosen else "rejected"
            raise DataError(f"{p.where}: the {which} completion is empty; a reward model needs text to score")
        if p.chosen == p.rejected:
            raise DataError(f"{p.where}: chosen and rejected are the same text ({p.chosen!r:.60}); the pair "
                            "expresses no preference")
        if p.margin is not None and not math.isfinite(p.margin):
            raise DataError(f"{p.where}: margin {p.margin!r} is not a finite number")
    return pairs


def pairs_from_rows(rows: list[dict[str, Any]], source: str) -> list[PreferencePair]:
    out = []
    for i, r in enumerate(rows):
        margin = r.get("margin")
        if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
            raise DataError(f"{source}:{r.get('_line', i + 1)}: field 'margin' must be a number, got {margin!r}")
        out.append(PreferencePair(str(r["prompt"]), str(r["chosen"]), str(r["rejected"]),
                                  None if margin is None else float(margin), f"{source}:{r.get('_line', i + 1)}"))
    return out


def read_pairs(path: str) -> list[PreferencePair]:
    """Preference pairs of a JSONL file (``where`` is file:line of the row)."""
    from gradascent.tasks.data import FORMATS, read_jsonl_lines

    rows, lines = read_jsonl_lines(path, required=FORMATS["preference"])
    for r, line in zip(rows, lines):
        r["_line"] = line
    return check_pairs(pairs_from_rows(rows, path))


def preference_data(spec: str, n_train: int, n_eval: int, seed: int,
                    eval_fraction: float = 0.1) -> tuple[list[PreferencePair], list[PreferencePair]]:
    """(train, held-out) pairs: a built-in task's (``n_train`` and ``n_eval`` pairs, drawn with different
    seeds) or a JSONL file's (a seeded ``eval_fraction`` of its rows held out, as ``tasks.split_rows``)."""
    from gradascent.tasks import BUILTIN_TASKS, load_task, split_rows

    if spec in BUILTIN_TASKS:
        task = load_task(spec, n_train=n_train, n_eval=n_eval, seed=seed)
        if task.kind != "preference":
            raise DataError(f"task '{spec}' has {task.kind} rows, not preference pairs; a reward model needs "
                            "{prompt, chosen, rejected} rows (e.g. the built-in 'preference' task)")
        train = pairs_from_rows(task.train, f"{spec} train")
        held = pairs_from_rows(task.eval, f"{spec} eval")
        return check_pairs(train), check_pairs(held)
    pairs = read_pairs(spec)
    train, held = split_rows(pairs, eval_fraction, seed)
    if not held:
        raise DataError(f"{spec} has {len(pairs)} preference pair(s): too few to hold any out for evaluation "
                        f"(eval_fraction {eval_fraction}); give it at least 2")
    return train, held


def prompt_set(spec: str, n_eval: int, seed: int) -> Any:
    """PPO's prompts: a built-in task's or a JSONL file's rows (any format with a 'prompt' field), split as
    ``tasks.load_task`` splits them. The hidden score is the task's own reward functions (weighted), when
    it has some: for the built-in preference task, the hidden rule that played the human."""
    from gradascent.algos.ppo_rlhf import PromptSet
    from gradascent.tasks import BUILTIN_TASKS, load_task, row_names

    if spec in BUILTIN_TASKS:
        task = load_task(spec, n_eval=n_eval, seed=seed)
    else:
        task = load_task(spec, seed=seed)
    train = [str(r["prompt"]) for r in task.train]
    held = [str(r["prompt"]) for r in task.eval][:n_eval]
    if not held:
        raise DataError(f"{spec} leaves no prompt for evaluation; give it more rows")
    hidden = weighted_rewards(task.reward_fns, task.reward_weights) if task.reward_fns and task.kind != "answer" else None
    return PromptSet(train=train, eval=held, hidden_score=hidden, train_names=row_names(task, "train"),
                     eval_names=row_names(task, "eval")[:len(held)])


def weighted_rewards(fns: Any, weights: Any) -> Any:
    """One function (prompts, completions) -> totals: sum_k w_k * fn_k(prompts, completions)."""

    def hidden(prompts: list[str], completions: list[str]) -> list[float]:
        totals = [0.0] * len(completions)
        for fn, w in zip(fns, weights):
            for i, v in enumerate(fn(prompts, completions)):
                totals[i] += w * float(v)
        return totals

    return hidden


def encode_sequences(
    tokenizer: Any,
    prompts: list[str],
    completions: list[str],
    add_eos: bool = True,
    max_length: int | None = None,
    where: list[str] | None = None,
) -> tuple[Tensor, Tensor]:
    """prompt + completion (+ EOS) token ids, right-padded.

    Returns (ids, mask): (B, L) long and (B, L) bool, True on real tokens. A sequence longer than
    ``max_length`` is a DataError naming its row (never truncated: a cut completion is another completion).
    """
    eos = tokenizer.eos_token_id
    rows = []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        ids = (tokenizer(p, add_special_tokens=False, verbose=False)["input_ids"]
               + tokenizer(c, add_special_tokens=False, verbose=False)["input_ids"])
        if add_eos and eos is not None:
            ids.append(eos)
        if max_length is not None and len(ids) > max_length:
            tag = where[i] if where else f"row {i}"
            raise DataError(f"{tag}: prompt and completion are {len(ids)} tokens, more than max_length={max_length}")
        rows.append(ids)
    L = max(len(r) for r in rows)
    out = torch.full((len(rows), L), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), L), dtype=torch.bool)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = True
    return out, mask
