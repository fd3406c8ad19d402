"""Typed CKKS wire messages and their versioned, validating serializer (protocols/ckks.md §7).

Encoding: ``b"SFCK" | version u8 | kind u8 | fields...``; ints are u64 big-endian, byte strings
u32 length + bytes, tuples u32 count + items. Decoding rejects unknown versions/kinds, short or
over-long input and trailing bytes with :class:`MessageError`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

__all__ = [
    "MessageError", "PublicContextMsg", "KeyShareMsg", "UploadMsg", "AggregateMsg", "KeyAdvertMsg", "encode", "decode",
]

MAGIC = b"SFCK"
WIRE_VERSION = 1
MAX_ITEMS = 4096
MAX_BYTES = 64 << 20


class MessageError(ValueError):
    """A message could not be decoded or has an invalid field."""


def _check_int(name: str, v: object) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**64:
        raise MessageError(f"{name} must be an int in [0, 2^64)")


@dataclass(frozen=True)
class _Msg:
    KIND: ClassVar[int] = 0
    SPEC: ClassVar[dict[str, str]] = {}  # field -> "int" | "bytes" | "str" | "ints" | "blobs"

    def __post_init__(self) -> None:
        for name, t in self.SPEC.items():
            v = getattr(self, name)
            if t == "int":
                _check_int(name, v)
            elif t == "bytes" and not isinstance(v, bytes):
                raise MessageError(f"{name} must be bytes")
            elif t == "str" and (not isinstance(v, str) or not v.isascii() or len(v) > 256):
                raise MessageError(f"{name} must be a short ASCII string")
            elif t == "ints":
                if not isinstance(v, tuple) or len(v) > MAX_ITEMS:
                    raise MessageError(f"{name} must be a tuple of at most {MAX_ITEMS} ints")
                for x in v:
                    _check_int(name, x)
            elif t == "blobs" and (
                not isinstance(v, tuple) or len(v) > MAX_ITEMS or not all(isinstance(b, bytes) for b in v)
            ):
                raise MessageError(f"{name} must be a tuple of at most {MAX_ITEMS} byte strings")


@dataclass(frozen=True)
class PublicContextMsg(_Msg):
    """Leader -> server: the public context of key generation ``generation``, signed (§3.3)."""

    KIND: ClassVar[int] = 1
    SPEC: ClassVar[dict[str, str]] = {"generation": "int", "round_index": "int", "leader": "int",
                                      "context": "bytes", "signature": "bytes"}
    generation: int
    round_index: int
    leader: int
    context: bytes
    signature: bytes


@dataclass(frozen=True)
class KeyShareMsg(_Msg):
    """Leader -> server -> receiver: the secret context sealed for one holder (§3.2)."""

    KIND: ClassVar[int] = 2
    SPEC: ClassVar[dict[str, str]] = {"generation": "int", "round_index": "int", "sender": "int",
                                      "receiver": "int", "key_id": "str", "blob": "bytes"}
    generation: int
    round_index: int
    sender: int
    receiver: int
    key_id: str
    blob: bytes


@dataclass(frozen=True)
class UploadMsg(_Msg):
    """Holder -> server: its ciphertexts for one round, signed with its roster key (§5.1)."""

    KIND: ClassVar[int] = 3
    SPEC: ClassVar[dict[str, str]] = {"round_index": "int", "generation": "int", "holder": "int",
                                      "key_id": "str", "ciphertexts": "blobs", "signature": "bytes"}
    round_index: int
    generation: int
    holder: int
    key_id: str
    ciphertexts: tuple[bytes, ...]
    signature: bytes


@dataclass(frozen=True)
class AggregateMsg(_Msg):
    """Server -> decryptor: who is in the sum, and either the summed ciphertexts or (verified
    mode, §5.3) the survivors' signed uploads so that the decryptor recomputes the sum itself."""

    KIND: ClassVar[int] = 4
    SPEC: ClassVar[dict[str, str]] = {"round_index": "int", "generation": "int", "key_id": "str",
                                      "survivors": "ints", "ciphertexts": "blobs", "uploads": "blobs"}
    round_index: int
    generation: int
    key_id: str
    survivors: tuple[int, ...]
    ciphertexts: tuple[bytes, ...]
    uploads: tuple[bytes, ...]


@dataclass(frozen=True)
class KeyAdvertMsg(_Msg):
    """Holder -> server -> leader (and leader's -> every key holder): a fresh X25519 key for one
    key generation, signed with the holder's roster key (§3.2)."""

    KIND: ClassVar[int] = 5
    SPEC: ClassVar[dict[str, str]] = {"generation": "int", "round_index": "int", "holder": "int",
                                      "x25519": "bytes", "signature": "bytes"}
    generation: int
    round_index: int
    holder: int
    x25519: bytes
    signature: bytes


_KINDS = {c.KIND: c for c in (PublicContextMsg, KeyShareMsg, UploadMsg, AggregateMsg, KeyAdvertMsg)}


def encode(msg: _Msg) -> bytes:
    if type(msg) not in _KINDS.values():
        raise TypeError("msg must be a securefed.ckks message")
    out = [MAGIC, bytes([WIRE_VERSION, msg.KIND])]
    for name, t in msg.SPEC.items():
        v = getattr(msg, name)
        if t == "int":
            out.append(struct.pack(">Q", v))
        elif t in ("bytes", "str"):
            b = v.encode("ascii") if t == "str" else v
            out += [struct.pack(">I", len(b)), b]
        elif t == "ints":
            out += [struct.pack(">I", len(v))] + [struct.pack(">Q", x) for x in v]
        else:
            out.append(struct.pack(">I", len(v)))
            for b in v:
                out += [struct.pack(">I", len(b)), b]
    return b"".join(out)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise MessageError("message truncated")
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]


def decode(data: bytes) -> _Msg:
    """Parse one message; every failure is a :class:`MessageError`."""
    if not isinstance(data, bytes):
        raise TypeError("data must be bytes")
    if len(data) > MAX_BYTES:
        raise MessageError("message too large")
    r = _Reader(data)
    if r.take(4) != MAGIC:
        raise MessageError("bad magic: not a securefed-ckks message")
    version, kind = r.take(2)
    if version != WIRE_VERSION:
        raise MessageError(f"unsupported wire version {version}")
    cls = _KINDS.get(kind)
    if cls is None:
        raise MessageError(f"unknown message kind {kind}")
    kwargs: dict[str, object] = {}
    for name, t in cls.SPEC.items():
        if t == "int":
            kwargs[name] = r.u64()
        elif t in ("bytes", "str"):
            b = r.take(r.u32())
            if t == "str":
                try:
                    kwargs[name] = b.decode("ascii")
                except UnicodeDecodeError:
                    raise MessageError(f"{name} is not ASCII") from None
            else:
                kwargs[name] = b
        else:
            count = r.u32()
            if count > MAX_ITEMS:
                raise MessageError(f"{name}: too many items ({count})")
            kwargs[name] = tuple(r.u64() if t == "ints" else r.take(r.u32()) for _ in range(count))
    if r.pos != len(data):
        raise MessageError("trailing bytes after message")
    return cls(**kwargs)

