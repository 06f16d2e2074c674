"""Tokenizers: the built-in character tokenizer, pad/EOS conventions, and left-padded prompt batches.

The built-in tasks use a character-level tokenizer built deterministically in code with the ``tokenizers``
library and wrapped as an ordinary ``transformers.PreTrainedTokenizerFast``: it saves with
``save_pretrained`` and loads back with ``load_tokenizer`` (or ``PreTrainedTokenizerFast.from_pretrained``),
and nothing downstream special-cases it. (Not with ``AutoTokenizer``: for a Qwen2 model directory
transformers 5 loads its own Qwen2 tokenizer class instead, whose pre-tokenizer drops spaces and newlines.)

Conventions shared by generation, log-probs and the trainers:

- A tokenizer without a pad token gets its EOS token as pad (``ensure_pad_token``). Masks are therefore
  never derived from ``ids != pad_token_id``: they are carried explicitly (the tokenizer's
  ``attention_mask`` for prompts, the sampler's ``completion_mask`` for completions), which stays correct
  when pad == eos.
- A model may stop on several EOS ids (e.g. ``<|endoftext|>`` and ``<|im_end|>``); ``eos_token_ids``
  gathers them from the tokenizer and the model's generation config.
- Prompts are left-padded, so every prompt's last token sits at the same position and generation appends
  at one column for the whole batch.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor

from gradascent.errors import ConfigError, DataError, GradascentWarning

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
# Printable ASCII (space to tilde) and newline: enough for every built-in task.
CHARS: tuple[str, ...] = tuple(chr(c) for c in range(32, 127)) + ("\n",)


def char_tokenizer(model_max_length: int = 1 << 16) -> Any:
    """The built-in character-level tokenizer: ids 0-2 are <pad>, <eos>, <unk>, then one id per character.

    Vocabulary: printable ASCII and newline, 99 tokens in all; any other character encodes as <unk>.
    No BOS token is added. Returns a ``PreTrainedTokenizerFast`` with ``padding_side='left'`` whose
    ``model_max_length`` is the context of the model it goes with (``load_model`` of a preset sets it).
    """
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate((PAD, EOS, UNK) + CHARS)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    # Every character is its own piece ("isolated"); Fuse joins them back without separators.
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, pad_token=PAD, eos_token=EOS, unk_token=UNK, padding_side="left",
        model_max_length=model_max_length,
    )
    return tok


def ensure_pad_token(tokenizer: Any) -> Any:
    """Give ``tokenizer`` a pad token if it has none: its EOS token. Returns the tokenizer (changed in place).

    Safe because nothing in gradascent reads padding from token ids; masks are explicit.
    """
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise DataError("the tokenizer has neither a pad token nor an EOS token; set one of them")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def eos_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """Every id that ends a completion: the tokenizer's EOS plus the model's ``generation_config.eos_token_id``
    (an int or a list). Sorted, without duplicates."""
    ids: set[int] = set()

    def add(x: Any) -> None:
        if x is None:
            return
        if isinstance(x, Iterable) and not isinstance(x, (str, bytes)):
            for y in x:
                add(y)
        else:
            ids.add(int(x))

    add(getattr(tokenizer, "eos_token_id", None))
    gen = getattr(model, "generation_config", None) if model is not None else None
    add(getattr(gen, "eos_token_id", None))
    return sorted(ids)


def check_prompt_lengths(tokenizer: Any, prompts: Sequence[str], max_tokens: int, what: str,
                         names: Sequence[str] | None = None) -> None:
    """Raise DataError naming the first of ``prompts`` that is empty or longer than ``max_tokens`` tokens (as
    ``encode_prompts`` counts them), by its entry in ``names`` (such as 'file.jsonl:12') or else as
    'prompt <i>' counted from 1. Trainers call it on a whole dataset before training, so that a prompt that
    cannot fit the model's context stops the run at its start, not at the step that draws it.

    Here and wherever gradascent tokenizes, ``verbose=False`` keeps transformers from logging that a text is
    longer than ``model_max_length``: the length is checked against the model's context, and a text too long
    is an error that names it."""
    for start in range(0, len(prompts), 1024):  # in chunks: only the lengths are kept
        chunk = list(prompts[start:start + 1024])
        ids = tokenizer(chunk, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]
        for i, row in enumerate(ids, start=start):
            name = names[i] if names is not None else f"prompt {i + 1}"
            if not row:
                raise DataError(f"{what}: {name} is empty (no tokens: {prompts[i]!r}); a completion is "
                                "sampled after at least one prompt token")
            if len(row) > max_tokens:
                raise DataError(f"{what}: {name} is {len(row)} tokens long, more than the {max_tokens} that "
                                f"fit: {prompts[i]!r:.60}")


def warn_unknown(tokenizer: Any, texts: Sequence[str], names: Sequence[str], what: str,
                 encoded: Sequence[Sequence[int]] | None = None) -> int:
    """Warn (once, naming the first) when some of ``texts`` hold characters the tokenizer can only encode as
    its unknown token, such as a tab or a non-ASCII letter for the built-in character tokenizer: a model
    trained on them learns <unk>, and can never write such a character back. Returns how many texts do.
    ``encoded``: the texts' token ids where the caller has them already (they are not tokenized again)."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return 0
    hits = []
    for start in range(0, len(texts), 1024):
        ids = (encoded[start:start + 1024] if encoded is not None else
               tokenizer(list(texts[start:start + 1024]), add_special_tokens=False,
                         return_attention_mask=False, verbose=False)["input_ids"])
        hits += [start + i for i, row in enumerate(ids) if unk in row]
    if hits:
        warnings.warn(f"{what}: {len(hits)} of {len(texts)} texts hold characters the tokenizer encodes as "
                      f"{tokenizer.unk_token} (the first: {names[hits[0]]}, {texts[hits[0]]!r:.60})", GradascentWarning,
                      stacklevel=2)
    return len(hits)


def check_fits_context(tokenizer: Any, prompts: Sequence[str], context: int | None, max_new_tokens: int,
                       what: str, names: Sequence[str] | None = None, holder: str = "model") -> None:
    """Every prompt plus ``max_new_tokens`` fits ``context`` (the ``holder``'s, e.g. "policy"), or a
    ConfigError (no room for any prompt) or ``check_prompt_lengths``'s DataError. No context: no limit."""
    if context is None:
        return
    if max_new_tokens >= context:
        raise ConfigError(f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the {holder}'s "
                          f"context of {context} tokens")
    check_prompt_lengths(tokenizer, prompts, context - max_new_tokens, what, names)


def encode_prompts(
    tokenizer: Any,
    prompts: Sequence[str],
    max_length: int | None = None,
    device: torch.device | str | None = None,
) -> tuple[Tensor, Tensor]:
    """Tokenize ``prompts`` into a left-padded batch without special tokens added.

    Returns:
        (ids, mask): (B, P) long token ids and (B, P) bool mask (True = real prompt token).

    Raises DataError for an empty prompt list, or a prompt longer than ``max_length`` tokens (never truncated
    silently: a cut prompt changes the task).
    """
    if isinstance(prompts, str):  # a str is a sequence too: of one-character prompts
        raise DataError(f"prompts must be a list of strings, got one string {prompts!r:.60}; pass [prompt]")
    if len(prompts) == 0:
        raise DataError("no prompts to encode")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise DataError(f"prompt {i} is {type(p).__name__} {p!r:.60}, not a string")
    ensure_pad_token(tokenizer)
    rows = [tokenizer(p, add_special_tokens=False, verbose=False)["input_ids"] for p in prompts]
    P = max(len(r) for r in rows)
    if max_length is not None:
        for i, r in enumerate(rows):
            if len(r) > max_length:
                raise DataError(f"prompt {i} is {len(r)} tokens long, more than the {max_length} allowed: "
                                f"{prompts[i]!r:.80}")
    P = max(P, 1)
    ids = torch.full((len(rows), P), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), P), dtype=torch.bool)
    for i, r in enumerate(rows):
        if r:
            ids[i, P - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, P - len(r):] = True
    if device is not None:
        ids, mask = ids.to(device), mask.to(device)
    return ids, mask


def decode_completions(tokenizer: Any, ids: Tensor, mask: Tensor, strip_eos: Sequence[int] = ()) -> list[str]:
    """Text of each completion row: the tokens where ``mask`` is True, minus the ids in ``strip_eos``.

    Shapes: ids, mask (B, T) -> B strings. Special tokens other than ``strip_eos`` are kept, so a completion
    that wrote <unk> or <pad> in the middle is judged as written.
    """
    if ids.shape != mask.shape:
        raise DataError(f"completion ids {tuple(ids.shape)} and mask {tuple(mask.shape)} differ in shape")
    drop = set(int(i) for i in strip_eos)
    out = []
    for row, m in zip(ids.tolist(), mask.tolist()):
        toks = [t for t, keep in zip(row, m) if keep and t not in drop]
        out.append(tokenizer.decode(toks, skip_special_tokens=False))
    return out
