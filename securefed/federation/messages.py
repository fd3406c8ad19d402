"""The federation's typed, versioned messages and their one codec (protocols/federation.md §3).

Frame: ``"SFFM" ‖ u8(version=1) ‖ u8(type) ‖ canonical JSON body`` (UTF-8, sorted keys). Byte
fields travel as base64 strings; nested settings (SecAggConfig, RoutingPolicy, TrainConfig,
RoundSpec) are validated by their own constructors. :func:`decode` checks the frame, the size, the
nesting, that the body names exactly the message's fields, and every field's type and range; every
failure is a :class:`MessageError` (a ValueError) whose text names the field — never a KeyError,
TypeError or RecursionError from a hostile peer's bytes.

Secure-aggregation and CKKS protocol messages are carried unchanged as bytes (their own codecs:
protocols/secagg.md §7, protocols/ckks.md §6); these are the round's control messages around them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from securefed.ckks import RoutingPolicy
from securefed.configio import ConfigError, from_dict, to_dict
from securefed.privacy.remote import RoundSpec
from securefed.secagg import SecAggConfig
from securefed.training.config import TrainConfig   # torch-free (the trainer re-exports it)

__all__ = ["MAGIC", "VERSION", "MAX_MESSAGE", "MessageError", "MsgType", "Hello", "Welcome", "Offer", "Decision",
           "Plan", "Ready", "CkksRotate", "CkksAdverts", "CkksKeys", "CkksShare", "CkksUploadRequest", "encode",
           "decode", "decode_as"]

MAGIC = b"SFFM"
VERSION = 2   # 2: the stage numbers of protocols/federation.md §4 changed (key stages before training)
MAX_MESSAGE = 64 << 20         # the largest control message (a big cohort's embedded secagg/CKKS messages)
MAX_TEXT = 1024
MAX_ITEMS = 1 << 20
MAX_ID = (1 << 31) - 1


class MessageError(ValueError):
    """A federation message is malformed, oversized, of another version or of the wrong kind."""


class MsgType(IntEnum):
    HELLO = 1
    WELCOME = 2
    OFFER = 3
    DECISION = 4
    PLAN = 5
    READY = 6
    CKKS_ROTATE = 7
    CKKS_ADVERTS = 8
    CKKS_KEYS = 9
    CKKS_SHARE = 10
    CKKS_UPLOAD_REQUEST = 11


def _hex64(name: str, v: str) -> None:
    if not isinstance(v, str) or len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
        raise MessageError(f"{name} must be a SHA-256 digest in lowercase hex")


def _round(v: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_ID:
        raise MessageError(f"round must be an int in [1, {MAX_ID}], got {v!r}")


def _generation(v: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_ID:
        raise MessageError(f"generation must be an int in [1, {MAX_ID}], got {v!r}")


def _holder(name: str, v: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= MAX_ID:
        raise MessageError(f"{name} must be a holder id in [1, {MAX_ID}], got {v!r}")


def _cohort(name: str, ids: tuple[int, ...]) -> None:
    for h in ids:
        _holder(name, h)
    if list(ids) != sorted(set(ids)):
        raise MessageError(f"{name} must be sorted and distinct")


@dataclass(frozen=True)
class Hello:
    """H→C, first call: who I am (the transport authenticates it; the coordinator checks it matches)."""

    holder_id: int
    software: str = ""

    def __post_init__(self) -> None:
        _holder("holder_id", self.holder_id)


@dataclass(frozen=True)
class Welcome:
    """C→H: the run a holder is joining (§3.1). Nothing here chooses the holder's data, floors or budget."""

    run_id: bytes
    holder_id: int
    rounds: int
    next_round: int
    model_preset: str
    vocab_size: int
    seq_len: int
    dim: int
    tokenizer_sha256: str
    init_sha256: str
    seed: int
    aggregation: Literal["secagg", "ckks+secagg", "plain"]
    secagg: SecAggConfig
    ckks: RoutingPolicy | None
    privacy_mode: Literal["none", "central", "distributed"]
    sampling: Literal["fixed", "poisson"]
    train: TrainConfig
    local_steps: int
    batch_size: int
    total_steps: int
    # how many released sums the coordinator's ledger records this holder's update in, and the last one's round
    # (federation.md §6): a holder whose own state records fewer releases lost its state, and refuses to go on
    included_rounds: int = 0
    last_included_round: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.run_id, bytes) or len(self.run_id) != 16:
            raise MessageError("run_id must be 16 bytes")
        _holder("holder_id", self.holder_id)
        for name, lo in (("rounds", 1), ("next_round", 1), ("vocab_size", 2), ("seq_len", 2), ("dim", 1),
                         ("local_steps", 1), ("batch_size", 1), ("total_steps", 1), ("seed", 0),
                         ("included_rounds", 0), ("last_included_round", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v < 2**62:
                raise MessageError(f"{name} must be an int >= {lo}, got {v!r}")
        _hex64("tokenizer_sha256", self.tokenizer_sha256)
        _hex64("init_sha256", self.init_sha256)
        if (self.aggregation == "ckks+secagg") != (self.ckks is not None):
            raise MessageError("ckks settings are given exactly when aggregation is ckks+secagg")


@dataclass(frozen=True)
class Offer:
    """C→H, stage OFFER: round r's cohort, the hash of θ_r and the provisional privacy plan (§4.1)."""

    round: int
    cohort: tuple[int, ...]
    model_sha256: str
    spec: RoundSpec

    def __post_init__(self) -> None:
        _round(self.round)
        _cohort("cohort", self.cohort)
        _hex64("model_sha256", self.model_sha256)
        if self.spec.round != self.round or self.spec.participants != self.cohort:
            raise MessageError("offer: the privacy plan is for another round or cohort")


@dataclass(frozen=True)
class Decision:
    """H→C: accept / refuse (OFFER), ok / failed (CKKS key share) — with the reason, logged by both."""

    round: int
    holder_id: int
    accept: bool
    reason: str = ""

    def __post_init__(self) -> None:
        _round(self.round)
        _holder("holder_id", self.holder_id)
        if not isinstance(self.accept, bool):
            raise MessageError("accept must be a bool")


@dataclass(frozen=True)
class Plan:
    """C→H, stage PLAN: the final privacy plan over the holders that accepted (§4.3)."""

    round: int
    spec: RoundSpec
    weight: float = 1.0          # this holder's aggregation weight w ∈ (0, 1], applied to Δ before clipping

    def __post_init__(self) -> None:
        _round(self.round)
        if self.spec.round != self.round:
            raise MessageError("plan: the privacy plan is for another round")
        if not (isinstance(self.weight, float) and 0 < self.weight <= 1):
            raise MessageError("plan: weight must be a number in (0, 1]")


@dataclass(frozen=True)
class Ready:
    """H→C, reply to PLAN: local training is done (round report: no data, §4.3)."""

    round: int
    holder_id: int
    tokens: int
    loss: float | None
    clipped: bool | None        # whether clipping changed Δ: None under distributed DP (the server must not learn it)
    record_epsilon: float | None = None

    def __post_init__(self) -> None:
        _round(self.round)
        _holder("holder_id", self.holder_id)
        if isinstance(self.tokens, bool) or not isinstance(self.tokens, int) or not 0 <= self.tokens < 2**53:
            raise MessageError("tokens must be a non-negative int")
        for name in ("loss", "record_epsilon"):
            v = getattr(self, name)
            if v is not None and not math.isfinite(v):
                raise MessageError(f"{name} must be a finite number or null")


@dataclass(frozen=True)
class CkksRotate:
    """C→key holders: make key generation ``generation`` (protocols/ckks.md §3.2 step 1)."""

    round: int
    generation: int
    key_holders: tuple[int, ...]

    def __post_init__(self) -> None:
        _round(self.round)
        _generation(self.generation)
        _cohort("key_holders", self.key_holders)


@dataclass(frozen=True)
class CkksAdverts:
    """C→leader: the other key holders' signed adverts, relayed unchanged (§3.2 step 2)."""

    round: int
    generation: int
    adverts: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _round(self.round)
        _generation(self.generation)


@dataclass(frozen=True)
class CkksKeys:
    """leader→C: the signed public context and one sealed share per other key holder (§3.2 step 2)."""

    round: int
    generation: int
    public_context: bytes
    shares: tuple[bytes, ...]

    def __post_init__(self) -> None:
        _round(self.round)
        _generation(self.generation)


@dataclass(frozen=True)
class CkksShare:
    """C→key holder: its sealed share and the leader's signed advert, relayed unchanged (§3.2 step 3)."""

    round: int
    generation: int
    share: bytes
    leader_advert: bytes

    def __post_init__(self) -> None:
        _round(self.round)
        _generation(self.generation)


@dataclass(frozen=True)
class CkksUploadRequest:
    """C→H, stage CKKS_UPLOAD: encrypt your small-tensor slice under key ``key_id`` (§5.1)."""

    round: int
    generation: int
    key_id: str
    cohort: tuple[int, ...]

    def __post_init__(self) -> None:
        _round(self.round)
        _generation(self.generation)
        _cohort("cohort", self.cohort)
        if not isinstance(self.key_id, str) or not 0 < len(self.key_id) <= 128:
            raise MessageError("key_id must be a short string")


_TYPES: dict[MsgType, type] = {
    MsgType.HELLO: Hello, MsgType.WELCOME: Welcome, MsgType.OFFER: Offer, MsgType.DECISION: Decision,
    MsgType.PLAN: Plan, MsgType.READY: Ready, MsgType.CKKS_ROTATE: CkksRotate, MsgType.CKKS_ADVERTS: CkksAdverts,
    MsgType.CKKS_KEYS: CkksKeys, MsgType.CKKS_SHARE: CkksShare, MsgType.CKKS_UPLOAD_REQUEST: CkksUploadRequest,
}
_CODES = {cls: code for code, cls in _TYPES.items()}
_SETTINGS = (SecAggConfig, RoutingPolicy, TrainConfig)


def _to_json(v: Any) -> Any:
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    if isinstance(v, RoundSpec):
        return v.to_dict()
    if isinstance(v, _SETTINGS):
        return to_dict(v)
    if isinstance(v, tuple):
        return [_to_json(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        raise MessageError("non-finite numbers do not cross the wire")
    return v


def encode(msg: object) -> bytes:
    code = _CODES.get(type(msg))
    if code is None:
        raise TypeError(f"{type(msg).__name__} is not a federation message")
    body = {f.name: _to_json(getattr(msg, f.name)) for f in dataclasses.fields(msg)}
    data = MAGIC + bytes([VERSION, code]) + json.dumps(body, sort_keys=True, separators=(",", ":"),
                                                      allow_nan=False).encode("utf-8")
    if len(data) > MAX_MESSAGE:
        raise MessageError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def _from_json(tp: Any, v: Any, name: str) -> Any:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        if v is None and len(args) < len(get_args(tp)):
            return None
        return _from_json(args[0], v, name)
    if origin is Literal:
        if v not in get_args(tp):
            raise MessageError(f"{name}: {v!r} is not one of {list(get_args(tp))}")
        return v
    if origin is tuple:
        if not isinstance(v, list) or len(v) > MAX_ITEMS:
            raise MessageError(f"{name} must be a list of at most {MAX_ITEMS} items")
        return tuple(_from_json(get_args(tp)[0], x, f"{name}[]") for x in v)
    if tp is bytes:
        if not isinstance(v, str):
            raise MessageError(f"{name} must be base64 text")
        try:
            return base64.b64decode(v.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise MessageError(f"{name} is not valid base64") from None
    if tp is RoundSpec:
        try:
            return RoundSpec.from_dict(v)
        except (ValueError, TypeError) as e:
            raise MessageError(f"{name}: {e}") from None
    if tp in _SETTINGS:
        if not isinstance(v, dict):     # configio would read null as "all defaults"
            raise MessageError(f"{name} must be a JSON object")
        try:
            return from_dict(tp, v, name)
        except (ConfigError, ValueError, TypeError) as e:
            raise MessageError(f"{name}: {e}") from None
    if tp is bool:
        if not isinstance(v, bool):
            raise MessageError(f"{name} must be true or false")
        return v
    if tp is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise MessageError(f"{name} must be an integer")
        return v
    if tp is float:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise MessageError(f"{name} must be a number")
        return float(v)
    if tp is str:
        if not isinstance(v, str) or len(v) > MAX_TEXT:
            raise MessageError(f"{name} must be a string of at most {MAX_TEXT} characters")
        return v
    raise MessageError(f"{name}: unsupported field type")  # pragma: no cover - a programming error


def decode(data: bytes) -> object:
    """bytes → one federation message, fully validated (module doc); MessageError otherwise."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError("message must be bytes")
    data = bytes(data)
    if len(data) > MAX_MESSAGE:
        raise MessageError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    if len(data) < 6 or data[:4] != MAGIC:
        raise MessageError("not a federation message")
    if data[4] != VERSION:
        raise MessageError(f"federation message version {data[4]} is not {VERSION}")
    try:
        cls = _TYPES[MsgType(data[5])]
    except ValueError:
        raise MessageError(f"unknown federation message type {data[5]}") from None
    try:
        body = json.loads(data[6:].decode("utf-8"), parse_constant=_no_constant, parse_float=_finite_float,
                          parse_int=_int64, object_pairs_hook=_unique_keys)
    except MessageError as e:
        raise MessageError(f"{cls.__name__}: {e}") from None
    except (ValueError, RecursionError):   # UnicodeDecodeError, JSONDecodeError are ValueErrors
        raise MessageError(f"{cls.__name__}: body is not a JSON document") from None
    if not isinstance(body, dict):
        raise MessageError(f"{cls.__name__}: body must be a JSON object")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    required = {n for n, f in fields.items() if f.default is dataclasses.MISSING}
    if not required <= set(body) or not set(body) <= set(fields):
        raise MessageError(f"{cls.__name__}: fields {sorted(set(body) ^ set(fields))[:8]} unknown or missing")
    kwargs = {n: _from_json(hints[n], v, f"{cls.__name__}.{n}") for n, v in body.items()}
    try:
        return cls(**kwargs)
    except MessageError:
        raise
    except (ValueError, TypeError) as e:
        raise MessageError(f"{cls.__name__}: {e}") from None


def decode_as(data: bytes, cls: type) -> Any:
    """decode() that also insists on the message type a stage expects."""
    msg = decode(data)
    if not isinstance(msg, cls):
        raise MessageError(f"expected {cls.__name__}, got {type(msg).__name__}")
    return msg


def _no_constant(name: str) -> None:
    raise MessageError(f"{name} is not a JSON number")


def _finite_float(text: str) -> float:
    v = float(text)
    if not math.isfinite(v):    # 1e999 overflows to inf: as forbidden as the Infinity constant
        raise MessageError(f"{text[:32]} is not a finite number")
    return v


def _int64(text: str) -> int:
    # an int beyond 64 bits is out of range for every field (and 4300+ digits would raise ValueError in int())
    if len(text.lstrip("-")) > 19 or not -(1 << 63) <= (v := int(text)) < 1 << 63:
        raise MessageError(f"integer {text[:32]} is out of the 64-bit range")
    return v


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    d = dict(pairs)
    if len(d) != len(pairs):    # canonical JSON: a duplicated key would mean different things to different parsers
        raise MessageError("duplicate keys in a JSON object")
    return d


_ = typing
