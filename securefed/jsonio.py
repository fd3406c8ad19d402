"""Strict JSON for every file of a run directory: RFC 8259 only, never a bare NaN or Infinity.

Python's ``json`` writes ``Infinity``/``NaN`` by default, which is not JSON: ``JSON.parse`` rejects it
and jq turns it into 1.797e308. securefed writes a non-finite float as a **string** instead, the
convention the privacy ledger has used from the start (protocols/dp.md §7; README "Files of a run"):

    +∞ -> "inf"      -∞ -> "-inf"      NaN -> "nan"

so every file parses with a strict parser, and a reader that wants numbers back calls
:func:`decode_float`. Reading is strict too: :func:`loads` refuses the bare tokens, and
:func:`read_json` / :func:`read_jsonl` name the file (and line) of anything they cannot parse —
a corrupt metrics line is an error, never silently skipped. ``legacy=True`` (the report's reader)
also accepts the bare tokens that securefed wrote before this convention, as the floats they meant:
an old run is still readable, while nothing written now contains them.

Layer 0 (beside configio): the standard library only.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = ["JSONFileError", "encode_floats", "decode_float", "dumps", "loads", "read_json", "read_jsonl"]

_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


class JSONFileError(ValueError):
    """A JSON file (or one line of a JSON-lines file) is not strict JSON; the message names it."""


def encode_floats(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by "inf" / "-inf" / "nan" (numpy scalars become
    Python numbers; tuples become lists). Everything else is returned as is."""
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        if math.isfinite(obj):
            return obj
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else str(k): encode_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [encode_floats(v) for v in obj]
    if isinstance(obj, numbers.Integral):  # numpy integers
        return int(obj)
    if isinstance(obj, numbers.Real):  # numpy floats (np.float32 is not a float subclass)
        return encode_floats(float(obj))
    if isinstance(obj, Path):
        return str(obj)
    return obj


def decode_float(value: Any) -> float | None:
    """A number written by :func:`dumps` back as a float: "inf"/"-inf"/"nan" -> the float, numbers
    as they are, None stays None. Anything else is a ValueError naming the value."""
    if value is None:
        return None
    if isinstance(value, str):
        if value in _NONFINITE:
            return _NONFINITE[value]
        raise ValueError(f"expected a number or 'inf'/'-inf'/'nan', got {value!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)


def dumps(obj: Any, *, indent: int | None = None, sort_keys: bool = True,
          default: Callable[[Any], Any] | None = None) -> str:
    """Strict JSON text of ``obj`` (non-finite floats as strings; never NaN/Infinity tokens).
    ``default`` turns an object JSON cannot hold into one it can (as in ``json.dumps``)."""
    return json.dumps(encode_floats(obj), indent=indent, sort_keys=sort_keys, allow_nan=False,
                      default=None if default is None else (lambda o: encode_floats(default(o))))


def _reject_constant(token: str) -> Any:
    raise ValueError(f"{token} is not JSON (securefed writes non-finite numbers as \"inf\", \"-inf\", \"nan\")")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    out = dict(pairs)
    if len(out) != len(pairs):   # {"epsilon": 8, "epsilon": 1}: which one a reader sees depends on the reader
        seen = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"duplicate key {dup!r} in one object")
    return out


def loads(text: str, *, legacy: bool = False) -> Any:
    """Parse strict JSON: the bare ``NaN``, ``Infinity`` and ``-Infinity`` tokens and an object with a
    duplicate key are refused (``legacy=True``: the bare tokens are read as the floats they meant, for files
    written by older securefed versions, which never wrote a duplicate key either)."""
    try:
        if legacy:
            return json.loads(text, object_pairs_hook=_unique_keys)
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def read_json(path: str | Path, *, legacy: bool = False) -> Any:
    """One strict JSON document from ``path``; a missing file is FileNotFoundError, a corrupt one
    :class:`JSONFileError` naming the file and the position."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise JSONFileError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        return loads(text, legacy=legacy)
    except json.JSONDecodeError as e:
        what = "is empty" if not text.strip() else f"is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})"
        raise JSONFileError(f"{p} {what}") from None
    except ValueError as e:
        raise JSONFileError(f"{p} is not strict JSON: {e}") from None


def read_jsonl(path: str | Path, *, missing_ok: bool = True, legacy: bool = False) -> list[dict]:
    """Every object of a JSON-lines file, in order. Blank lines are allowed; any other line that is not
    a strict JSON object raises :class:`JSONFileError` naming the file and the line number (a torn
    last line included: a reader must decide what to do with it, never skip it unseen)."""
    p = Path(path)
    if not p.exists() and missing_ok:
        return []
    rows = []
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise JSONFileError(f"{p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = loads(line, legacy=legacy)
        except ValueError as e:  # JSONDecodeError is a ValueError
            msg = e.msg if isinstance(e, json.JSONDecodeError) else str(e)
            raise JSONFileError(f"{p}, line {n}: not valid JSON ({msg})") from None
        if not isinstance(row, dict):
            raise JSONFileError(f"{p}, line {n}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows
