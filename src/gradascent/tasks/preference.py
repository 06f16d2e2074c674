"""A preference task for RLHF whose "human" is a hidden scoring rule.

Prompts ask to describe a thing ("Describe the cat:"); a completion is a few words. The hidden rule scores a
completion's words, ignoring the prompt:

    score(y) = (P - N - U) / n        in [-1, 1]

with n the number of words, P the number of *distinct* positive words, N the number of negative words and U
the number of words outside the task's vocabulary. An empty completion scores -1. Repeating one positive word
earns it once, so the best completions use several different positive words and nothing else.

Preference pairs (prompt, chosen, rejected) compare two completions drawn uniformly from the vocabulary: the
higher score is chosen, pairs closer than ``min_gap`` are redrawn. A reward model trained on the pairs learns
the words' valences; the rule itself is the ground truth by which an RLHF policy is judged
(``preference_reward``).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

POSITIVE: tuple[str, ...] = ("good", "great", "kind", "bright", "calm", "happy", "warm", "fine")
NEGATIVE: tuple[str, ...] = ("bad", "sad", "dull", "cold", "rude", "dark", "weak", "ugly")
NEUTRAL: tuple[str, ...] = ("the", "a", "is", "was", "very", "and", "big", "small", "old", "new")
TOPICS: tuple[str, ...] = ("cat", "dog", "day", "sun", "tree", "road", "sea", "town")
WORDS: tuple[str, ...] = POSITIVE + NEGATIVE + NEUTRAL + TOPICS
_POS, _NEG, _ALL = frozenset(POSITIVE), frozenset(NEGATIVE), frozenset(WORDS)


def preference_score(text: str) -> float:
    """The hidden rule: (distinct positive - negative - unknown words) / words; -1 for an empty text."""
    words = text.lower().split()
    if not words:
        return -1.0
    positive = len({w for w in words if w in _POS})
    negative = sum(w in _NEG for w in words)
    unknown = sum(w not in _ALL for w in words)
    return (positive - negative - unknown) / len(words)


def preference_reward(prompts: Sequence[str], completions: Sequence[str], **_: Any) -> list[float]:
    """``preference_score`` of each completion (the ground truth of the task), as a reward function."""
    return [preference_score(c) for c in completions]


def preference_prompt(rng: random.Random) -> str:
    return f"Describe the {rng.choice(TOPICS)}:"


def random_completion(rng: random.Random, min_words: int = 3, max_words: int = 6, repeat: float = 0.25) -> str:
    """A leading space then ``min_words``-``max_words`` words: each drawn uniformly from the task vocabulary,
    or, with probability ``repeat``, a copy of a word already drawn. The copies show a reward model what the
    rule says of a repeated positive word (it earns nothing more); without them, pairs of uniform draws
    almost never hold one, and PPO finds the reward model over-rates "good good good good"."""
    words: list[str] = []
    for _ in range(rng.randint(min_words, max_words)):
        words.append(rng.choice(words) if words and rng.random() < repeat else rng.choice(WORDS))
    return " " + " ".join(words)


def preference_prompts(n: int, seed: int = 0) -> list[dict[str, str]]:
    """``n`` rows {"prompt": ...} for sampling a policy."""
    rng = random.Random(seed)
    return [{"prompt": preference_prompt(rng)} for _ in range(n)]


def preference_pairs(n: int, seed: int = 0, min_gap: float = 0.2) -> list[dict[str, str]]:
    """``n`` rows {"prompt", "chosen", "rejected"}: two random completions, the higher-scoring one chosen."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        prompt = preference_prompt(rng)
        a, b = random_completion(rng), random_completion(rng)
        sa, sb = preference_score(a), preference_score(b)
        if abs(sa - sb) < min_gap:
            continue
        chosen, rejected = (a, b) if sa > sb else (b, a)
        rows.append({"prompt": prompt, "chosen": chosen, "rejected": rejected})
    return rows
