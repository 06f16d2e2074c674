"""Reward functions: plain Python callables, combined with weights, checked sample by sample.

A reward function has the signature

    reward(prompts: list[str], completions: list[str], **columns) -> list[float]

where ``columns`` are the dataset's other fields, one list entry per sample (e.g. ``answer``). A function
that does not need a column simply accepts ``**kwargs``. Several functions are combined with weights:
total_i = sum_k w_k * reward_k(...)_i. Every function's mean is reported as its own metric.

A function that raises, returns the wrong number of values, a non-number, NaN or inf stops the run with
a ``RewardError`` naming the function and the sample.

Built-ins, usable by name in configs: ``exact_match`` (the stripped completion is the ``answer`` column, the
arithmetic task's reward), ``numeric_match`` (the last number of the completion equals the
``answer`` column), ``format_number`` (the completion is a bare integer), ``length_penalty`` (minus the
completion's length over 100 characters), and with an argument ``regex(PATTERN)`` (1.0 when the stripped
completion fully matches PATTERN) and ``length_penalty(N)`` (the same penalty above N characters);
``regex_reward(pattern)`` and ``length_penalty_fn(max_chars)`` build them in Python. Users name their own as
``module:function`` (looked for in the current directory first, as under ``python -m``) or
``path/to/file.py:function``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import numbers
import os
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

import torch

from gradascent.errors import GradascentError

RewardFn = Callable[..., Sequence[float]]

_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


class RewardError(GradascentError):
    """A reward function failed or returned something unusable; the message names it and the sample."""


def reward_name(fn: RewardFn) -> str:
    return getattr(fn, "__name__", None) or type(fn).__name__


def last_number(text: str) -> float | None:
    """The last number written in ``text``, or None."""
    found = _NUMBER.findall(text)
    return float(found[-1]) if found else None


def exact_match(prompts: Sequence[str], completions: Sequence[str], answer: Sequence[Any], **_: Any) -> list[float]:
    """1.0 where the completion, stripped of surrounding whitespace, is exactly the answer; else 0.0."""
    return [1.0 if c.strip() == str(a).strip() else 0.0 for c, a in zip(completions, answer)]


def numeric_match(prompts: list[str], completions: list[str], answer: Sequence[Any], **_: Any) -> list[float]:
    """1.0 when the last number in the completion equals the ``answer`` column, else 0.0."""
    out = []
    for completion, target in zip(completions, answer):
        got = last_number(completion)
        try:
            want = float(target)
        except (TypeError, ValueError):
            want = None
        out.append(1.0 if got is not None and want is not None and got == want else 0.0)
    return out


def regex_reward(pattern: str, name: str | None = None) -> RewardFn:
    """A reward of 1.0 when the whole (stripped) completion matches ``pattern``, else 0.0."""
    rx = re.compile(pattern, re.DOTALL)

    def reward(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return [1.0 if rx.fullmatch(c.strip()) else 0.0 for c in completions]

    reward.__name__ = name or f"regex[{pattern}]"
    return reward


format_number = regex_reward(r"-?\d+", name="format_number")


def length_penalty_fn(max_chars: int = 100, scale: float = 1.0) -> RewardFn:
    """-scale * max(0, len(completion) - max_chars) / max_chars: nothing below ``max_chars``."""

    def length_penalty(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return [-scale * max(0, len(c) - max_chars) / max_chars for c in completions]

    return length_penalty


length_penalty = length_penalty_fn()

BUILTIN_REWARDS: dict[str, RewardFn] = {
    "exact_match": exact_match,
    "numeric_match": numeric_match,
    "format_number": format_number,
    "length_penalty": length_penalty,
}


def _regex_spec(pattern: str) -> RewardFn:
    try:
        return regex_reward(pattern)
    except re.error as exc:
        raise RewardError(f"reward function 'regex({pattern})': not a valid regular expression ({exc})") from None


def _length_spec(max_chars: str) -> RewardFn:
    if not max_chars.strip().isdigit() or int(max_chars) < 1:
        raise RewardError(f"reward function 'length_penalty({max_chars})': the argument must be a whole number "
                          "of characters >= 1")
    fn = length_penalty_fn(int(max_chars))
    fn.__name__ = f"length_penalty[{int(max_chars)}]"
    return fn


# Built-ins with an argument, written name(argument) in configs and on the command line.
BUILTIN_REWARD_FACTORIES: dict[str, Callable[[str], RewardFn]] = {
    "regex": _regex_spec,  # regex(PATTERN): 1.0 when the stripped completion fully matches PATTERN
    "length_penalty": _length_spec,  # length_penalty(N): -(len - N) / N above N characters
}
_FACTORY_SPEC = re.compile(r"(\w+)\((.*)\)", re.DOTALL)


def import_from_cwd(module_name: str) -> Any:
    """``import_module`` with the current directory searched first, as ``python -m`` does (the ``gradascent``
    console script does not put it on ``sys.path``); ``sys.path`` is restored afterwards."""
    cwd = os.getcwd()
    added = cwd not in {os.path.abspath(p or os.curdir) for p in sys.path}
    if added:
        sys.path.insert(0, cwd)
        importlib.invalidate_caches()  # a finder of the directory cached before the file was written would miss it
    try:
        return importlib.import_module(module_name)
    finally:
        if added:
            sys.path.remove(cwd)


def resolve_reward(spec: str | RewardFn) -> RewardFn:
    """A built-in name, a built-in with its argument (``regex(-?\\d+)``, ``length_penalty(200)``),
    ``module:function``, ``path/to/file.py:function``, or a callable."""
    if callable(spec):
        return spec
    if not isinstance(spec, str):
        raise RewardError(f"reward function {spec!r}: a {type(spec).__name__}, neither a callable nor a name such "
                          "as 'exact_match' or 'module:function'")
    if spec in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[spec]
    factory = _FACTORY_SPEC.fullmatch(spec)
    opened = re.match(r"(\w+)\(", spec)
    if factory is None and opened is not None and opened.group(1) in BUILTIN_REWARD_FACTORIES:
        raise RewardError(f"reward function '{spec}': write it as {opened.group(1)}(ARGUMENT), ending with ')'")
    if factory is not None:
        name, arg = factory.groups()
        if name not in BUILTIN_REWARD_FACTORIES:
            raise RewardError(f"reward function '{spec}': no built-in '{name}(...)'; those taking an argument are "
                              f"{', '.join(f'{k}(...)' for k in BUILTIN_REWARD_FACTORIES)}")
        return BUILTIN_REWARD_FACTORIES[name](arg)
    if ":" not in spec:
        raise RewardError(f"reward function '{spec}' is neither a built-in ({', '.join(BUILTIN_REWARDS)}, "
                          f"{', '.join(f'{k}(...)' for k in BUILTIN_REWARD_FACTORIES)}) nor of the form "
                          "module:function")
    module_name, _, attr = spec.rpartition(":")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise RewardError(f"reward function '{spec}': file {path} does not exist")
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            assert mod_spec is not None and mod_spec.loader is not None
            module = importlib.util.module_from_spec(mod_spec)
            mod_spec.loader.exec_module(module)
        else:
            module = import_from_cwd(module_name)
    except RewardError:
        raise
    except Exception as exc:  # the user's module failed to import: say which and why
        raise RewardError(f"reward function '{spec}': importing {module_name} failed: "
                          f"{type(exc).__name__}: {exc}") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RewardError(f"reward function '{spec}': {module_name} has no function '{attr}'")
    return fn


def required_columns(fn: RewardFn) -> list[str]:
    """The columns ``fn`` cannot run without: the parameters after ``prompts`` and ``completions`` that have no
    default (``numeric_match``: ``answer``). [] when the signature cannot be read."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return []
    named = [p for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    positional = [p for p in named if p.kind is p.POSITIONAL_OR_KEYWORD]
    skip = {p.name for p in positional[:2]}  # prompts, completions (whatever their names)
    return [p.name for p in named if p.name not in skip and p.default is p.empty]


def check_columns(reward_fns: Sequence[RewardFn], columns: Sequence[str], where: str) -> None:
    """RewardError naming the first reward function that needs a column ``where``'s rows lack, so that a task
    file without, say, an ``answer`` field stops a run before it starts rather than at its first scoring."""
    for fn, name in zip(reward_fns, metric_names(reward_fns)):
        missing = [c for c in required_columns(fn) if c not in columns]
        if missing:
            have = ", ".join(sorted(columns)) or "none"
            raise RewardError(f"reward function '{name}' needs the column {missing[0]!r}, which the rows of "
                              f"{where} lack (their columns besides 'prompt': {have})")


def metric_names(reward_fns: Sequence[RewardFn]) -> list[str]:
    """The name each function's metric is logged under (``reward/<name>``): its own name, and for a later
    function whose name is already taken, ``<name>_2``, ``<name>_3`` ... skipping names other functions have."""
    taken = {reward_name(fn) for fn in reward_fns}
    names: list[str] = []
    for fn in reward_fns:
        name = base = reward_name(fn)
        k = 1
        while name in names or (k > 1 and name in taken):
            k += 1
            name = f"{base}_{k}"
        names.append(name)
    return names


_CULPRIT_SAMPLES = 64  # samples tried one by one after a reward function raised on a batch


def _culprit(fn: RewardFn, exc: Exception, prompts: list[str], completions: list[str],
             columns: dict[str, Sequence[Any]]) -> str:
    """After ``fn`` raised ``exc`` on a batch: the first of its first 64 samples it raises the same kind of
    error on alone (each column sliced as it came: list, tuple, array or tensor), or the batch."""
    for i in range(min(len(completions), _CULPRIT_SAMPLES)):
        try:
            fn(prompts[i:i + 1], completions[i:i + 1], **{k: v[i:i + 1] for k, v in columns.items()})
        except type(exc):
            return f"sample {i}: prompt {prompts[i]!r:.60}, completion {completions[i]!r:.60}"
        except Exception:
            continue
    first = f"; first prompt {prompts[0]!r:.60}" if prompts else ""
    return f"on the batch of {len(completions)}, not on any of its first {_CULPRIT_SAMPLES} samples alone{first}"


def _as_number(v: Any) -> Any:
    """A one-element torch tensor or NumPy value/array of ints or floats as a Python number; else ``v``."""
    if isinstance(v, torch.Tensor):
        return v.item() if v.numel() == 1 and not v.dtype.is_complex and v.dtype != torch.bool else v
    kind = getattr(getattr(v, "dtype", None), "kind", None)  # NumPy scalars and arrays
    return v.item() if kind in ("i", "u", "f") and getattr(v, "size", 0) == 1 else v


def score(
    reward_fns: Sequence[RewardFn],
    prompts: list[str],
    completions: list[str],
    columns: dict[str, Sequence[Any]] | None = None,
    weights: Sequence[float] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted total reward of each sample and the mean of each function.

    Returns:
        (total, metrics): total is (N,) float32; metrics maps ``reward/<name>`` to that function's mean
        (``metric_names``: ``<name>_2`` ... for a later function of a name already taken). A value may be any
        real number within float32's range: Python, NumPy, or a one-element array or tensor.
    """
    n = len(completions)
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} completions")
    weights = list(weights) if weights is not None else [1.0] * len(reward_fns)
    if len(weights) != len(reward_fns):
        raise RewardError(f"{len(weights)} reward weights for {len(reward_fns)} reward functions")
    total = torch.zeros(n, dtype=torch.float32)
    metrics: dict[str, float] = {}
    for fn, w, name in zip(reward_fns, weights, metric_names(reward_fns)):
        try:
            values = fn(prompts, completions, **(columns or {}))
        except Exception as exc:
            raise RewardError(f"reward function '{name}' raised {type(exc).__name__}: {exc} "
                              f"({_culprit(fn, exc, prompts, completions, columns or {})})") from None
        if values is None or isinstance(values, numbers.Number):  # forgot to return, or returned one number
            raise RewardError(f"reward function '{name}' returned {values!r}, not a list of {n} numbers (one per "
                              "completion)")
        if isinstance(values, (Mapping, AbstractSet)):  # iterating gives keys, or members in no fixed order
            raise RewardError(f"reward function '{name}' returned a {type(values).__name__}, not a list of {n} "
                              "numbers in the order of the completions")
        values = [_as_number(v) for v in values]
        if len(values) != n:
            raise RewardError(f"reward function '{name}' returned {len(values)} values for {n} completions")
        numeric = [not isinstance(v, bool) and isinstance(v, numbers.Real) for v in values]
        t = torch.tensor([float(v) if ok else math.nan for v, ok in zip(values, numeric)], dtype=torch.float32)
        bad = (~torch.isfinite(t)).nonzero()  # not a number, or not finite once in float32 (the total's dtype)
        if len(bad):
            i = int(bad[0])
            raise RewardError(f"reward function '{name}' returned {values[i]!r} for sample {i} "
                              f"(prompt {prompts[i]!r:.60}, completion {completions[i]!r:.60}); "
                              "rewards must be finite float32 numbers")
        metrics[f"reward/{name}"] = float(t.double().mean()) if n else 0.0  # 1/50 -> 0.02, not float32's 0.0199...
        total += w * t
    return total, metrics
