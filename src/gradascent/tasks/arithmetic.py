"""Integer arithmetic with a verifiable answer: "47+38=" -> "85", "12-47=" -> "-35".

Operands are drawn uniformly from [0, max_operand] (default 99: two-digit addition and subtraction), the
operator from ``ops``. The completion is expected to be the bare answer followed by EOS. Difficulty is set so
that a model of a few million parameters trained from scratch by SFT for a couple of CPU minutes answers a
fair share right but not most (see docs/lm.md for measured figures), leaving room for reinforcement learning.

Rewards (the signature of ``gradascent.rewards``: ``(prompts, completions, **columns) -> list[float]``):

- ``exact_match``: 1 if the stripped completion is exactly the answer, else 0.
- ``format_number`` (from ``gradascent.rewards``): 1 if the stripped completion is a bare integer, else 0.
"""

from __future__ import annotations

import random

from gradascent.rewards import exact_match, format_number

__all__ = ["arithmetic_dataset", "exact_match", "format_number", "solve"]


def solve(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    raise ValueError(f"unknown operator {op!r}")


def arithmetic_dataset(n: int, seed: int = 0, max_operand: int = 99, ops: str = "+-") -> list[dict[str, str]]:
    """``n`` rows {"prompt": "a<op>b=", "answer": "<int>"} drawn with ``random.Random(seed)``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.randint(0, max_operand), rng.randint(0, max_operand)
        op = rng.choice(ops)
        rows.append({"prompt": f"{a}{op}{b}=", "answer": str(solve(a, op, b))})
    return rows
