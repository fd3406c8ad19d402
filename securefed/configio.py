"""Typed configuration: frozen dataclasses <-> plain dicts/YAML, strictly validated.

Every config in securefed is a frozen dataclass whose fields are bool/int/float/str, Literal[...],
Optional[...], tuple[...] or another such dataclass. :func:`from_dict` rejects unknown keys (naming
them and the path to them), wrong types and bad literals, so a typo in a YAML file is one clear
error instead of a silently ignored setting.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")   # 1e-6, 2.5E3: a number in YAML 1.2 and JSON

__all__ = ["ConfigError", "from_dict", "to_dict", "parse_yaml", "load_yaml", "dump_yaml", "override"]


class ConfigError(ValueError):
    """A configuration value is missing, unknown or of the wrong type."""


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value not in get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(get_args(tp))}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError("; ".join(errors) or f"{where}: invalid value {value!r}")
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        out = [_convert(inner, v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping")
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(kt, k, where): _convert(vt, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        # YAML 1.1 (PyYAML) reads 1e-6 — no dot — as a string; YAML 1.2 and JSON read it as the number it is
        if isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value.strip()):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: cannot interpret {value!r} as {tp}")


def from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    label = where or cls.__name__
    if isinstance(data, cls):
        return data
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{label}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{label}: unknown key(s) {unknown}; valid keys are {sorted(fields)}")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = _convert(hints[name], value, f"{where}.{name}" if where else name)
    try:
        return cls(**kwargs)
    except TypeError as e:  # missing required fields
        raise ConfigError(f"{label}: {e}") from None
    except ValueError as e:
        if isinstance(e, ConfigError):
            raise
        raise ConfigError(f"{label}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Plain (YAML/JSON-safe) representation of a config dataclass."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, the one YAML parse of securefed: every way ``text`` cannot be parsed is a
    ``yaml.YAMLError`` — a document nested deeper than the parser can recurse ("[" * 100000) included, which
    ``safe_load`` lets out as a RecursionError — so a caller's one ``except yaml.YAMLError`` covers it."""
    try:
        return yaml.safe_load(text)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply for the YAML parser") from None


def override(data: dict, dotted: str) -> None:
    """Apply one ``a.b.c=value`` override (value parsed as YAML) to a nested dict in place."""
    if "=" not in dotted:
        raise ConfigError(f"override {dotted!r} must look like section.key=value")
    key, raw = dotted.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"override {dotted!r} has an empty key")
    node = data
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"override {dotted!r}: {p} is not a section")
        node = nxt
    try:
        node[parts[-1]] = parse_yaml(raw)
    except yaml.YAMLError as e:
        shown = dotted if len(dotted) <= 80 else dotted[:60] + "…"   # a 100 kB value is not echoed whole
        raise ConfigError(f"override {shown!r}: the value is not valid YAML ({_yaml_problem(e)}); put a "
                          "string value in quotes") from None


def load_yaml(path: str | Path) -> dict:
    """A config file's top-level mapping; every way it can be unreadable is one ConfigError naming the file
    (never a parser traceback: a newcomer's first config often has a YAML slip)."""
    p = Path(path)
    if p.is_dir():
        raise ConfigError(f"config file {p} is a directory; name a YAML file")
    if not p.is_file():
        raise ConfigError(f"config file {p} does not exist")
    try:
        data = parse_yaml(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"config file {p} is not UTF-8 text; name a YAML file") from None
    except OSError as e:
        raise ConfigError(f"config file {p} cannot be read ({e.strerror or type(e).__name__})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {p} is not valid YAML ({_yaml_problem(e)})") from None
    if data is None:   # an empty file (or only comments): no settings
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping at the top level, not {type(data).__name__}")
    return data


def _yaml_problem(e: yaml.YAMLError) -> str:
    """'line L, column C: what the parser expected' (1-based, as an editor shows them)."""
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {what}" if mark is not None else what


def dump_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False)


_ = typing  # keep typing imported for get_type_hints on string annotations
