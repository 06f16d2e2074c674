"""Config dataclasses: documented fields, strict loading from YAML files and command-line flags.

Every algorithm has one frozen dataclass. Each field carries its documentation as a string literal right
under it (the CleanRL/tyro convention); ``field_docs`` reads those strings from the source, so the
documentation lives in exactly one place and ``gradascent ALGO --help`` shows it.

Loading is strict: an unknown key, a value of the wrong type, or a value out of range is a ``ConfigError``
naming the key, the value and what is allowed, with a "did you mean" suggestion for misspelt keys.
Range checks live in each dataclass's ``__post_init__`` through ``require``.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import difflib
import inspect
import math
import numbers
import os
import re
import textwrap
import types
import typing
import warnings
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

import numpy as np
import yaml

from gradascent.errors import ConfigError, GradascentWarning

C = TypeVar("C")


def require(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise a ConfigError for ``key`` unless ``ok``. ``allowed`` says what is accepted, e.g. 'in (0, 1)'.

    A float value that is NaN or infinite, or a list holding one, is refused whatever ``ok`` says: ``lr > 0``
    holds for inf, and a hyperparameter of inf would turn the weights to NaN at the first update."""
    items = value if isinstance(value, (list, tuple)) else (value,)
    if any(isinstance(v, float) and not math.isfinite(v) for v in items):
        raise ConfigError(f"config key '{key}': {value!r} is not allowed; expected a finite value ({allowed})")
    if not ok:
        raise ConfigError(f"config key '{key}': {value!r} is not allowed; expected {allowed}")


def describe_changes(keys: Sequence[str], saved: dict[str, Any], now: dict[str, Any]) -> str:
    """``keys`` that differ between two configs, each with both values: "lr 0.001 there, 0.002 here"."""
    def short(v: Any) -> str:
        text = "(none)" if v is None else repr(v)
        return text if len(text) <= 40 else text[:37] + "..."
    return "; ".join(f"{k} {short(saved.get(k))} there, {short(now.get(k))} here" for k in keys)


def check_config(cfg: Any, cls: type, fn: str) -> None:
    """A ConfigError unless ``cfg`` is a ``cls``: ``fn`` (the function it was handed to) reads its fields, and
    another config, or a dict, would fail there as an AttributeError on the first field it lacks."""
    if not isinstance(cfg, cls):
        hint = f"; build one with {cls.__name__}(**d)" if isinstance(cfg, dict) else ""
        raise ConfigError(f"{fn} takes a config of class {cls.__name__}, got {type(cfg).__name__}{hint}")


def check_fields(cfg: Any) -> None:
    """Check every field of a config built in Python against its annotation, as loading from YAML does.

    Called first in each config's ``__post_init__``: a misspelt choice (``optimizer="sgd"``), a value of the
    wrong type (``steps=2.5``, ``rewards="numeric_match"``) or a section given as a mapping is caught when the
    config is built, not halfway through a run. Values are normalised in place the way ``from_dict`` does it
    (an int for a float field becomes a float, a list a tuple, a path a string, a section's mapping its
    dataclass over the section's default)."""
    hints = _hints(type(cfg))
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        value, tp = getattr(cfg, f.name), hints[f.name]
        if isinstance(value, dict) and dataclasses.is_dataclass(tp):
            default = _field_default(f)
            if dataclasses.is_dataclass(default):
                value = _deep_merge(to_dict(default), value)
        checked = _coerce(f.name, value, tp, from_string=False)
        if checked is not getattr(cfg, f.name):
            object.__setattr__(cfg, f.name, checked)  # the configs are frozen


@lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


@lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of a dataclass, read from its source (and its bases')."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            src = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = ast.parse(src).body[0].body  # type: ignore[attr-defined]
        for prev, node in zip(body, body[1:]):
            if (
                isinstance(prev, ast.AnnAssign)
                and isinstance(prev.target, ast.Name)
                and isinstance(node, ast.Expr)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                docs[prev.target.id] = " ".join(node.value.value.split())
    return docs


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "null"
    if get_origin(tp) in (tuple, list):
        return f"a list of {_type_name(get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def split_commas(text: str) -> list[str]:
    """'a,b(c,d),e' -> ['a', 'b(c,d)', 'e']: a flag's list items, split on the commas outside parentheses (so
    that ``--rewards 'numeric_match,regex(\\d{1,3})'`` keeps the regex whole)."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "(":
            depth += 1
        elif ch == ")" and depth:
            depth -= 1
        elif ch == "," and not depth:
            items.append(text[start:i])
            start = i + 1
    return items + [text[start:]]


def _coerce(key: str, value: Any, tp: Any, from_string: bool) -> Any:
    """Check ``value`` against the annotation ``tp``; convert strings when they came from a flag."""
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None or (from_string and isinstance(value, str) and value.lower() in ("none", "null")):
            if type(None) in args:
                return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg, from_string)
            except ConfigError:
                continue
        raise ConfigError(f"config key '{key}': {value!r} is not allowed; expected {_type_name(tp)}")
    if origin is Literal:
        allowed = get_args(tp)
        if value in allowed:
            return value
        hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise ConfigError(f"config key '{key}': {value!r} is not allowed; expected {_type_name(tp)}{extra}")
    if origin in (tuple, list):
        (inner, *_rest) = get_args(tp) or (Any,)
        if from_string and isinstance(value, str):
            text = value.strip()
            if text.startswith("[") and text.endswith("]"):  # the YAML form, '[32, 32]', taken as well
                text = text[1:-1]
            value = [v.strip() for v in split_commas(text) if v.strip() != ""]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}': {value!r} is not allowed; expected {_type_name(tp)}")
        items = [_coerce(key, v, inner, from_string) for v in value]
        return tuple(items) if origin is tuple else items
    # NumPy scalars (a value from np.arange or an array of a sweep) count as the numbers they hold: np.int64 is
    # an Integral, np.float32 a Real, np.bool_ neither (a bool field takes it, a number field does not).
    is_bool = isinstance(value, (bool, np.bool_))
    if tp is bool:
        if is_bool:
            return bool(value)
        if from_string and isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
            return value.lower() in ("true", "1", "yes")
    elif tp is int:
        if isinstance(value, numbers.Integral) and not is_bool:
            return int(value)
        # a flag's text, or a quoted YAML number ("3"), as float fields take "1e-5"; "3.0" and "1e3" are no ints
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
            return int(value)
        if isinstance(value, numbers.Real) and not is_bool and float(value).is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, numbers.Real) and not is_bool:
            return float(value)
        if isinstance(value, str):  # YAML reads 1e-5 as a string; flags are strings
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
    elif tp is Any:
        return value
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return from_dict(tp, value, prefix=f"{key}.", from_string=from_string)
        if isinstance(value, tp):
            return value
    raise ConfigError(f"config key '{key}': {value!r} is not allowed; expected {_type_name(tp)}")


# Keys of earlier versions, now named as in the other configs: read under their new name (a config file or a
# run directory written before the change still loads and resumes).
RENAMED: dict[str, str] = {"checkpoint_every": "save_every", "keep_checkpoints": "keep_last",
                           "grad_clip": "max_grad_norm"}


def renamed(data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (nested mappings too) with the keys of ``RENAMED`` under their new names, where the new name is
    not also there."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        new = RENAMED.get(str(key).replace("-", "_"))
        key = new if new is not None and new not in data else key
        out[key] = renamed(value) if isinstance(value, dict) else value
    return out


def from_dict(cls: type[C], data: dict[str, Any], *, prefix: str = "", from_string: bool = False) -> C:
    """Build ``cls`` from a mapping, rejecting unknown keys and wrong types (nested dataclasses too)."""
    if not isinstance(data, dict):
        raise ConfigError(f"config{(' ' + prefix.rstrip('.')) if prefix else ''} must be a mapping of keys to "
                          f"values, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        name = str(key).replace("-", "_")
        if name not in fields and RENAMED.get(name) in fields:
            if RENAMED[name] in {str(k).replace("-", "_") for k in data}:
                raise ConfigError(f"config keys '{prefix}{key}' and '{prefix}{RENAMED[name]}' are the same "
                                  f"setting ('{key}' is its earlier name); keep '{RENAMED[name]}'")
            warnings.warn(f"config key '{prefix}{key}' is now called '{prefix}{RENAMED[name]}'; read as that",
                          GradascentWarning, stacklevel=2)
            name = RENAMED[name]
        if name not in fields:
            hint = difflib.get_close_matches(name, list(fields), n=1, cutoff=0.5)
            extra = f"; did you mean '{prefix}{hint[0]}'?" if hint else ""
            raise ConfigError(f"unknown config key '{prefix}{key}' for {cls.__name__}{extra}")
        default = _field_default(fields[name])
        if isinstance(value, dict) and dataclasses.is_dataclass(hints[name]) and dataclasses.is_dataclass(default):
            # a section given in part keeps the rest of its default instance, not its class's own defaults
            value = _deep_merge(to_dict(default), value)
        kwargs[name] = _coerce(prefix + name, value, hints[name], from_string)
    return _construct(cls, kwargs, prefix)


def _construct(cls: type[C], kwargs: dict[str, Any], prefix: str) -> C:
    """``cls(**kwargs)``; a section's own checks name their keys with the section (``ppo.minibatch_size``)."""
    try:
        return cls(**kwargs)
    except TypeError as exc:  # a required field without a value
        raise ConfigError(f"{cls.__name__}: {exc}") from None
    except ConfigError as exc:
        if not prefix or "config key '" not in str(exc):
            raise
        raise ConfigError(str(exc).replace("config key '", f"config key '{prefix}", 1)) from None


def _field_default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


def _deep_merge(base: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """``given`` over ``base``, nested mappings merged key by key (keys as written: '-' or '_')."""
    out = dict(base)
    for key, value in given.items():
        name = str(key).replace("-", "_")
        if isinstance(value, dict) and isinstance(out.get(name), dict):
            out[name] = _deep_merge(out[name], value)
        else:
            out.pop(name, None)
            out[key] = value
    return out


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain YAML-able values (tuples become lists)."""
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        return v
    return plain(cfg)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the last, silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *anchor`: merged keys may be overridden
                continue
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
            if not isinstance(key, (str, int, float, bool)):
                continue  # an unhashable key: construct_mapping names it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice in one mapping", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping as ``yaml.safe_load`` does, but with a key given twice an error; any problem is a
    ConfigError naming the file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {p} cannot be read as text: {exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config file {p} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


def load_config(
    cls: type[C],
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    flag_overrides: dict[str, str] | None = None,
) -> C:
    """Resolve a config: dataclass defaults < YAML file < ``overrides`` (typed) < ``flag_overrides`` (strings).

    Dotted keys (``ppo.lr``) reach into nested dataclasses.
    """
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    cfg = from_dict(cls, data)
    for values, from_string in ((overrides or {}, False), (flag_overrides or {}, True)):
        if values:
            cfg = replace(cfg, values, from_string=from_string)
    return cfg


def replace(cfg: C, changes: dict[str, Any], *, from_string: bool = False) -> C:
    """A copy of ``cfg`` with ``changes`` applied (dotted keys for nested configs), validated again."""
    merged = to_dict(cfg)
    for key, value in changes.items():
        parts = key.replace("-", "_").split(".")
        node = merged
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"unknown config key '{key}' for {type(cfg).__name__}")
            node = node[part]
        node[parts[-1]] = value
    # Values already in the config are typed; re-check only the changed ones as strings if needed.
    return _rebuild(type(cfg), merged, set(changes), from_string)


def _rebuild(cls: type[C], merged: dict[str, Any], changed: set[str], from_string: bool, prefix: str = "") -> C:
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    fields = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    for key, value in merged.items():
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
            extra = f"; did you mean '{prefix}{hint[0]}'?" if hint else ""
            raise ConfigError(f"unknown config key '{prefix}{key}' for {cls.__name__}{extra}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp) and isinstance(value, dict):
            kwargs[key] = _rebuild(tp, value, changed, from_string, prefix=f"{prefix}{key}.")  # type: ignore[arg-type]
        else:
            fs = from_string and any(c.replace("-", "_") == prefix + key for c in changed)
            kwargs[key] = _coerce(prefix + key, value, tp, fs)
    return _construct(cls, kwargs, prefix)


def save_yaml(cfg: Any, path: str | Path) -> None:
    """Write the config (a dataclass or a mapping) as YAML, atomically: a kill leaves the old file or the new."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False), encoding="utf-8")
    os.replace(tmp, path)


def add_config_flags(parser: argparse.ArgumentParser, cls: type, prefix: str = "", defaults: Any = None,
                     hidden: frozenset[str] = frozenset()) -> None:
    """One ``--field-name VALUE`` flag per field (nested: ``--ppo.lr``), its help the field's docstring.

    The default shown is the field's default; for a nested section, the value in the section's default
    instance (``defaults``), which may differ from its class's own defaults. Flags of the dotted keys in
    ``hidden`` are left out of the help but still parsed, so that the config's own check names them."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    group = parser.add_argument_group(f"{cls.__name__} fields" if not prefix else f"{prefix.rstrip('.')} fields")
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        tp = hints[f.name]
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        if defaults is not None:
            default = getattr(defaults, f.name)
        if dataclasses.is_dataclass(tp):
            add_config_flags(parser, tp, prefix=f"{prefix}{f.name}.", defaults=default,  # type: ignore[arg-type]
                             hidden=hidden)
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        # A bool flag alone means true (`--resume`); `--resume false` also works.
        extra: dict[str, Any] = {"nargs": "?", "const": "true"} if tp is bool else {}
        group.add_argument(
            flag, dest=f"cfg:{prefix}{f.name}", default=None, metavar=_metavar(tp),
            help=argparse.SUPPRESS if f"{prefix}{f.name}" in hidden
            else f"{docs.get(f.name, '')} [default: {shown_value(default)}]".replace("%", "%%"), **extra,
        )


def shown_value(value: Any) -> str:
    """A value as it is written in a config file or after a flag (YAML): null, true, [64, 64], cpu."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shown_value(v) for v in value) + "]"
    if isinstance(value, str):  # quoted only where YAML would read it as something else (a number, null, ...)
        try:
            plain = bool(value) and value.strip() == value and yaml.safe_load(value) == value
        except yaml.YAMLError:
            plain = False
        return value if plain else repr(value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def bool_flag(value: str) -> bool:
    """argparse ``type`` of a flag that is a bool outside any config (``--resume``, ``--resume false``), read as
    the config fields' bool flags are."""
    try:
        return _coerce("flag", value, bool, from_string=True)
    except ConfigError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a bool (true/false, yes/no, 1/0)") from None


def _metavar(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return "{" + ",".join(str(a) for a in get_args(tp)) + "}"
    return _type_name(tp).upper().replace(" ", "_")


def flag_values(args: argparse.Namespace) -> dict[str, str]:
    """The config flags the user actually gave, as {dotted_key: string}."""
    return {k[4:]: v for k, v in vars(args).items() if k.startswith("cfg:") and v is not None}
