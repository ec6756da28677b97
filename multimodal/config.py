"""Frozen, typed configs read from YAML, with ``key.sub=value`` overrides.

A config is a frozen dataclass deriving from :class:`Config`. Nested sections are dataclass fields;
a field typed ``dict[str, Any]`` holds free-form arguments (validated by whoever consumes them).

>>> cfg = TrainConfig.from_yaml("recipe.yaml", overrides=["optim.lr=3e-4"])   # doctest: +SKIP

Every value is checked against its field's type. An unknown key or a wrong type raises
:class:`ConfigError` naming the full dotted key and, for an unknown key, the nearest valid one (in any section).
So does what else a user can type: a float that is not finite, YAML that is not text, is malformed, nests past
Python's recursion limit or holds an alias inside its own anchor.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

__all__ = ["Config", "ConfigError", "apply_overrides", "load_yaml", "parse_override", "suggest"]

C = TypeVar("C", bound="Config")


class ConfigError(ValueError):
    """A config key or value is wrong. The message names the key and what to do."""


def suggest(key: str, valid: Iterable[str], *, listed: Iterable[str] | None = None) -> str:
    """Return ``"; did you mean 'x'?"`` for the closest valid key, else ``"; valid keys: ..."`` (``listed``, default
    ``valid``)."""
    valid = list(valid)
    leaf = key.rsplit(".", 1)[-1]
    close = [v for v in valid if v.rsplit(".", 1)[-1] == leaf][:1]  # a key of another section: `lr` -> `optim.lr`
    if not close:
        close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    if not close:
        close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(sorted(listed or valid))}"


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.glob("*.yaml"))
        hint = (
            f"one of its YAML files ({', '.join(inside[:6])})"
            if inside
            else "a YAML file, e.g. configs/vit/shapes.yaml"
        )
        raise ConfigError(f"config file {str(path)!r} is a directory; pass {hint}")
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist; pass a YAML file, e.g. configs/vit/shapes.yaml")
    try:
        data = _safe_load(path.read_text(), str(path))
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not UTF-8 text, so not a YAML file; pass a .yaml recipe or card") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {_yaml_problem(e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values, got {type(data).__name__}")
    return data


_YAML_BOOL_WORDS = {True: ("yes", "on", "true", "y"), False: ("no", "off", "false", "n")}


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b=value`` into its key path and the YAML-parsed value."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = _safe_load(raw, f"the override of {key!r}") if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _safe_load(text: str, what: str) -> Any:
    """``yaml.safe_load``, refusing what the config code cannot walk: nesting past Python's recursion limit and
    aliases that refer to themselves (``&a [*a]``)."""
    try:
        value = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{what} nests too deeply; configs are a few levels of mappings and lists") from None
    except ValueError as e:  # a value PyYAML's constructors refuse, e.g. an int of more than 4,300 digits
        raise ConfigError(f"{what} holds a value that cannot be read: {e}") from None
    if not _acyclic(value):
        raise ConfigError(f"{what} holds a YAML alias inside its own anchor (&a [*a]); write the value out")
    return value


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A YAML error in one line: what is wrong and where (the parser's own message spans several)."""
    problem, mark = getattr(e, "problem", None), getattr(e, "problem_mark", None)
    if problem is None:
        return " ".join(str(e).split())
    return f"{problem}" + (f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "")


def _acyclic(node: Any, parents: tuple[int, ...] = ()) -> bool:
    if not isinstance(node, (dict, list)):
        return True
    if id(node) in parents:
        return False
    children = node.values() if isinstance(node, dict) else node
    return all(_acyclic(child, (*parents, id(node))) for child in children)


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of the nested dict ``data`` with ``key.sub=value`` overrides set."""
    out = _deepcopy_dict(data)
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"cannot set {'.'.join(path)}: {part!r} holds a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def _deepcopy_dict(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy_dict(v) if isinstance(v, Mapping) else v for k, v in d.items()}


@dataclasses.dataclass(frozen=True)
class Config:
    """Base of every config: typed construction from dicts, YAML and overrides; ``replace``; ``to_dict``."""

    @classmethod
    def from_dict(cls: type[C], data: Mapping[str, Any] | None, *, prefix: str = "", known: Sequence[str] = ()) -> C:
        """Build from a nested mapping, checking every key and type. ``known``: every valid dotted key of the whole
        config (a section is given its root's), for suggesting the right section of a misplaced key."""
        data = dict(data or {})
        if not isinstance(data, dict):
            raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
        here = [prefix + name for name in fields] + _nested_keys(cls, prefix)
        known = known or here
        for key in data:
            if key not in fields:
                full = prefix + str(key)
                others = [k for k in known if not full.startswith(k + ".")]  # not the key's own sections
                raise ConfigError(f"unknown config key {full!r}{suggest(full, others, listed=here)}")
        kwargs = {name: _coerce(value, hints[name], prefix + name, known) for name, value in data.items()}
        try:
            return cls(**kwargs)
        except TypeError as e:  # a required field is missing
            raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None

    @classmethod
    def from_yaml(cls: type[C], path: str | Path, overrides: Iterable[str] = ()) -> C:
        """Read ``path`` and apply ``key.sub=value`` overrides."""
        return cls.from_dict(apply_overrides(load_yaml(path), overrides))

    def replace(self: C, **changes: Any) -> C:
        """A new config with ``changes`` applied (type-checked, nested dicts merged into sections)."""
        return type(self).from_dict(_merge(self.to_dict(), changes))

    def override(self: C, overrides: Iterable[str]) -> C:
        """A new config with ``key.sub=value`` overrides applied."""
        return type(self).from_dict(apply_overrides(self.to_dict(), overrides))

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (tuples become lists), ready for YAML."""
        return _plain(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def flat(self) -> dict[str, Any]:
        """Dotted keys to scalar values, e.g. for experiment trackers."""
        out: dict[str, Any] = {}

        def walk(node: Any, prefix: str) -> None:
            if isinstance(node, dict):
                for k, v in node.items():
                    walk(v, f"{prefix}{k}.")
            else:
                out[prefix[:-1]] = node if isinstance(node, (int, float, str, bool)) else str(node)

        walk(self.to_dict(), "")
        return out


def _nested_keys(cls: type, prefix: str) -> list[str]:
    """Dotted keys of every nested section's fields, for suggesting the right section."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and issubclass(tp, Config):
            out += [f"{prefix}{f.name}.{g.name}" for g in dataclasses.fields(tp)] + _nested_keys(
                tp, f"{prefix}{f.name}."
            )
    return out


def _merge(base: dict[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in changes.items():
        if isinstance(v, Config):
            v = v.to_dict()
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = v
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Config):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, known: Sequence[str] = ()) -> Any:
    """Check ``value`` against the annotation ``tp``; parse strings for numeric and bool fields."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        is_null = value is None or (isinstance(value, str) and value.lower() in ("none", "null"))
        if is_null and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        for arg in options:
            try:
                return _coerce(value, arg, key, known)
            except ConfigError:
                if len(options) == 1:  # X | None: X's own message says more than "expects X or NoneType"
                    raise
        names = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"config key {key!r} expects {names}, got {value!r}")
    if origin is typing.Literal:
        if isinstance(value, bool):  # YAML 1.1 reads an unquoted no/off/yes/on as a bool: take the word back
            words = [a for a in args if isinstance(a, str) and a.lower() in _YAML_BOOL_WORDS[value]]
            if len(words) == 1:
                return words[0]
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"config key {key!r} must be one of {', '.join(map(repr, args))}, got {value!r}{hint}")
    if isinstance(tp, type) and issubclass(tp, Config):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} is a section; give it a mapping, got {value!r}")
        return tp.from_dict(value, prefix=key + ".", known=known)
    if origin in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"config key {key!r} expects {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item = args[0] if args else Any
        return tuple(_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"config key {key!r} expects a mapping, got {value!r}")
        squashed = next((k for k, v in value.items() if v is None and ":" in str(k)), None)
        if squashed is not None:  # YAML reads {a:1} as the key "a:1" with no value
            fixed = str(squashed).replace(":", ": ", 1)
            raise ConfigError(
                f"config key {key!r}: {str(squashed)!r} reads as a key without a value; YAML needs a space after "
                f"the colon: {{{fixed}}}"
            )
        if len(args) == 2:
            return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"config key {key!r} expects true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r} expects an integer, got {value!r}")
    if tp is float:
        number = None
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):  # PyYAML reads 1e-3 as a string
            with contextlib.suppress(ValueError, OverflowError):  # OverflowError: an int past float's range
                number = float(value)
        if number is None:
            raise ConfigError(f"config key {key!r} expects a number, got {value!r}")
        if not math.isfinite(number):
            raise ConfigError(f"config key {key!r} expects a finite number, got {value!r}")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {key!r} expects a string, got {value!r}")
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"config key {key!r} expects {_type_name(tp)}, got {value!r}")
    return value
