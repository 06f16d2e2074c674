"""The command line: a thin shell over the public Python API.

Each command lives in the module that owns it, as ``add_parser(subparsers, common)`` setting ``func`` to a
function of the parsed arguments; this file only assembles them. User errors (``GradascentError``) print one
line and exit 2; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import os
import re
import sys
import warnings
from typing import Any, NoReturn

from gradascent import __version__
from gradascent.errors import GradascentError, GradascentWarning

# Modules that contribute commands, in the order of `gradascent --help`.
COMMAND_MODULES: list[str] = [
    "gradascent.demo",
    "gradascent.rl.cli",
    "gradascent.algos.sft",
    "gradascent.algos.reward_model",
    "gradascent.algos.ppo_rlhf",
    "gradascent.algos.rlhf",
    "gradascent.algos.grpo",
    "gradascent.lm.cli",
    "gradascent.run.plot",
    "gradascent.run.resume",
]


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other error of the command line (subcommands inherit it).

    A negative number in exponent form (``--lr -1e-3``) or ``-inf`` is a value, as ``-0.001`` is: argparse's own
    pattern (``-1``, ``-.5``, ``-0.5``) takes it for a flag and says "expected one argument", so the config's
    check, which says what is wrong with the value, never ran."""

    _NEGATIVE = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-inf(inity)?$", re.IGNORECASE)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._negative_number_matcher = self._NEGATIVE

    def error(self, message: str) -> "NoReturn":  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _one_line_warnings(standard):  # type: ignore[no-untyped-def]
    """A ``warnings.showwarning`` that prints gradascent's own warnings (``GradascentWarning``) as one line on
    stderr, like its errors (the Python source line under a warning says nothing to a user of the command
    line), and hands anyone else's to ``standard``."""
    def show(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
        if issubclass(category, GradascentWarning):
            print(f"gradascent: warning: {message}", file=file if file is not None else sys.stderr)
        else:
            standard(message, category, filename, lineno, file, line)
    return show


def _refuse_unknown(parser: argparse.ArgumentParser, args: argparse.Namespace, unknown: list[str]) -> "NoReturn":
    """argparse's 'unrecognized arguments' error, from the subcommand's parser (so that it points at that
    command's --help) and with the closest of its flags for a misspelt one."""
    sub, descended = parser, True
    while descended:  # down to the (sub)subcommand's own parser: gradascent rl ppo
        descended = False
        for action in sub._actions:
            chosen = getattr(args, action.dest, None) if isinstance(action, argparse._SubParsersAction) else None
            if isinstance(chosen, str) and chosen in action.choices:
                sub, descended = action.choices[chosen], True
                break
    from gradascent.run.config import RENAMED

    flags = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
    hints = []
    for arg in unknown:
        if arg.startswith("--"):
            name = arg.split("=", 1)[0]
            head, _, last = name[2:].rpartition(".")
            new = RENAMED.get(last.replace("-", "_"))
            now = f"--{head + '.' if head else ''}{new.replace('_', '-')}" if new else None
            if now in flags:
                hints.append(f"{name} is now {now}")
                continue
            close = difflib.get_close_matches(name, flags, n=1)
            if close:
                hints.append(f"{arg.split('=', 1)[0]}: did you mean {close[0]}?")
    sub.error(f"unrecognized arguments: {' '.join(unknown)}" + (f" ({'; '.join(hints)})" if hints else ""))


def build_parser() -> argparse.ArgumentParser:
    # --debug before or after the command: the subcommands' copy sets it only when given (SUPPRESS), so it
    # does not overwrite the top-level value with its own default
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show full tracebacks on errors")
    parser = _Parser(prog="gradascent", description="Policy optimization from REINFORCE to GRPO.")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--version", action="version", version=f"gradascent {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:  # importing every command's module takes a moment: Ctrl-C then is no traceback either
        parser = build_parser()
    except KeyboardInterrupt:
        print("gradascent: interrupted", file=sys.stderr)
        return 130
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        _refuse_unknown(parser, args, unknown)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _one_line_warnings(warnings.showwarning)
            return int(args.func(args) or 0)
    except GradascentError as exc:
        if args.debug:
            raise
        print(f"gradascent: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("gradascent: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
