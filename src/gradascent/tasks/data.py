"""Reading task data from JSONL files: one JSON object per line, strict, errors naming file and line.

Four row formats, told apart by their fields (the first that fits, in this order):

    {"prompt": ..., "chosen": ..., "rejected": ...} preference pairs
    {"prompt": ..., "completion": ...}              demonstrations for SFT
    {"prompt": ..., "answer": ...}                  a task with a verifiable answer
    {"prompt": ...}                                 prompts alone: for GRPO with reward functions of one's own
                                                    (any other field is a column they receive), or PPO

Blank lines are skipped. Extra fields are kept (reward functions receive them as columns), so every row of a
task file has the same fields as its first. A line that is not JSON, not an object, lacks a field or has other
fields than the first row is a ``DataError`` naming ``file:line``; so is a binary file, a file that is not
UTF-8, and a file with no rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gradascent.errors import DataError

Row = dict[str, Any]

FORMATS: dict[str, tuple[str, ...]] = {
    "preference": ("prompt", "chosen", "rejected"),
    "completion": ("prompt", "completion"),
    "answer": ("prompt", "answer"),
    "prompt": ("prompt",),
}


class _Float(float):
    """A JSON number with a fraction or an exponent, with its text as written: a required field is text, and
    str() of the float would rewrite an answer ("2.50" -> "2.5", "1e5" -> "100000.0")."""

    text: str

    @classmethod
    def parse(cls, text: str) -> float:
        number = cls(text)
        number.text = text
        return number


def _plain(value: Any) -> Any:
    """``value`` with every ``_Float`` left in it (in fields other than the required ones) a plain float."""
    if isinstance(value, _Float):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def read_jsonl(path: str | Path, required: Sequence[str] = ("prompt",), same_fields: bool = False) -> list[Row]:
    """Rows of a JSONL file, each an object holding every field of ``required`` as text.

    Numbers in a required field (``"answer": 19``, ``2.50``, ``1e5``) are turned into their text as written; any
    other type is an error.
    With ``same_fields`` every row must have the first row's fields, no more and no fewer (a task's rows
    become the columns of its reward functions, one list per field).
    """
    return read_jsonl_lines(path, required, same_fields)[0]


def read_jsonl_lines(path: str | Path, required: Sequence[str] = ("prompt",),
                     same_fields: bool = False) -> tuple[list[Row], list[int]]:
    """``read_jsonl``'s rows and the line number of each (1-based), for errors that name ``file:line``."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"data file {p} does not exist")
    if p.is_dir():
        raise DataError(f"data file {p} is a directory, not a JSONL file")
    raw = p.read_bytes()
    if b"\x00" in raw[:8192]:
        raise DataError(f"{p} is a binary file, not JSONL text (one JSON object per line)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{p}:{line}: not UTF-8 text ({exc.reason}); is this a JSONL file?") from None
    text = text.removeprefix("\ufeff")  # a byte order mark, as some editors on Windows write: not JSON
    rows: list[Row] = []
    lines: list[int] = []
    # Lines end at "\n" alone (and a "\r" before it): str.splitlines would also split inside a JSON string
    # at U+2028, U+2029 or U+0085, which JSON allows unescaped.
    for lineno, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        try:
            obj = json.loads(line, parse_float=_Float.parse)
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}:{lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{p}:{lineno}: expected a JSON object with fields {', '.join(required)}, "
                            f"got {type(obj).__name__}")
        for key in required:
            if key not in obj:
                raise DataError(f"{p}:{lineno}: missing field '{key}' (each line needs {', '.join(required)})")
            value = obj[key]
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                raise DataError(f"{p}:{lineno}: field '{key}' must be text, got {type(value).__name__}")
            obj[key] = value if isinstance(value, str) else getattr(value, "text", str(value))
        obj = _plain(obj)
        if "prompt" in required and not obj["prompt"]:
            raise DataError(f"{p}:{lineno}: field 'prompt' is empty; every row needs a prompt of at least one "
                            "character")
        if same_fields and rows and obj.keys() != rows[0].keys():
            raise DataError(f"{p}:{lineno}: fields {', '.join(sorted(obj))} differ from the first row's "
                            f"({', '.join(sorted(rows[0]))}); every row of a task file needs the same fields, "
                            "which reward functions receive as columns")
        rows.append(obj)
        lines.append(lineno)
    if not rows:
        raise DataError(f"{p} holds no examples (an empty dataset)")
    return rows, lines


def detect_format(path: str | Path) -> str:
    """'preference', 'completion', 'answer' or 'prompt': the first format whose fields the first row has."""
    first = read_jsonl(path, required=("prompt",))[0]
    return next(name for name, fields in FORMATS.items() if all(f in first for f in fields))


def load_rows(path: str | Path) -> tuple[str, list[Row]]:
    """(format, rows) of a JSONL task file; every row must have the fields of the first, which set the format."""
    fmt, rows, _ = load_rows_lines(path)
    return fmt, rows


def load_rows_lines(path: str | Path) -> tuple[str, list[Row], list[int]]:
    """``load_rows`` and the line number of each row."""
    fmt = detect_format(path)
    return (fmt, *read_jsonl_lines(path, required=FORMATS[fmt], same_fields=True))
