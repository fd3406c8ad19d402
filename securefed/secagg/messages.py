"""Typed wire messages and the one versioned, validating serializer (protocols/secagg.md §6, §7).

Frame: ``"SFSA" ‖ u8(version=1) ‖ u8(type) ‖ body``; u32 big-endian integers, u64 for vector
lengths, ``lp`` byte strings, ``u32(count)`` lists, ring vectors as ``u8(k) ‖ u64(P) ‖ P
little-endian words``. :func:`decode` checks every length, range and ordering and rejects trailing
bytes; it raises :class:`MessageError` and nothing else.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from securefed.primitives.aead import TAG_BYTES
from securefed.primitives.keys import KEY_BYTES, SIGNATURE_BYTES
from securefed.primitives.shamir import SHARE_BYTES
from securefed.secagg.errors import MessageError

__all__ = [
    "VERSION", "CIPHERTEXT_BYTES", "SHARE_PLAINTEXT_BYTES", "KIND_B", "KIND_S",
    "RoundStart", "AdvertiseKeys", "KeyRoster", "ShareKeys", "ForwardedShares", "MaskedInput", "MaskedBuffer",
    "SurvivorList", "ConsistencySignature", "UnmaskRequest", "UnmaskShares", "Message", "encode", "decode",
]

MAGIC = b"SFSA"
VERSION = 1
MAX_ID = (1 << 31) - 1
MAX_COUNT = 1 << 20
MAX_CONTEXT = 4096
SHARE_PLAINTEXT_BYTES = 4 + 4 + 2 * SHARE_BYTES
CIPHERTEXT_BYTES = SHARE_PLAINTEXT_BYTES + TAG_BYTES
KIND_B, KIND_S = 0, 1


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.buf = memoryview(data)
        self.pos = 0

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise MessageError("message is truncated")
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u32(self) -> int:
        return struct.unpack(">I", self.take(4))[0]

    def u64(self) -> int:
        return struct.unpack(">Q", self.take(8))[0]

    def ident(self) -> int:
        v = self.u32()
        if not 1 <= v <= MAX_ID:
            raise MessageError(f"holder id {v} outside [1, 2^31-1]")
        return v

    def fixed(self, n: int, what: str) -> bytes:
        if self.u32() != n:
            raise MessageError(f"{what} must be {n} bytes")
        return bytes(self.take(n))

    def count(self) -> int:
        c = self.u32()
        if c > MAX_COUNT:
            raise MessageError("list is too long")
        return c

    def ids(self, what: str) -> tuple[int, ...]:
        out = tuple(self.ident() for _ in range(self.count()))
        _check_sorted(out, what)
        return out


def _check_sorted(ids: tuple[int, ...] | list[int], what: str) -> None:
    if any(a >= b for a, b in zip(ids, ids[1:])):
        raise MessageError(f"{what} must be strictly increasing ids")


def _u32(v: int) -> bytes:
    return struct.pack(">I", v)


def _lp(b: bytes) -> bytes:
    return _u32(len(b)) + b


def _ids(v: tuple[int, ...]) -> bytes:
    return _u32(len(v)) + b"".join(_u32(i) for i in v)


@dataclass(frozen=True)
class RoundStart:
    TYPE: ClassVar[int] = 0
    context: bytes
    round_index: int
    cohort: tuple[int, ...]
    ring_bits: int
    length: int
    threshold: int
    min_survivors: int
    degree: int

    def _body(self) -> bytes:
        return (_lp(self.context) + _u32(self.round_index) + _ids(self.cohort) + bytes([self.ring_bits])
                + struct.pack(">Q", self.length) + _u32(self.threshold) + _u32(self.min_survivors) + _u32(self.degree))

    @classmethod
    def _parse(cls, r: _Reader) -> "RoundStart":
        ctx_len = r.u32()
        if ctx_len > MAX_CONTEXT:
            raise MessageError("context is too long")
        ctx = bytes(r.take(ctx_len))
        m = cls(ctx, r.u32(), r.ids("cohort"), r.u8(), r.u64(), r.u32(), r.u32(), r.u32())
        if not 16 <= m.ring_bits <= 32:
            raise MessageError("ring_bits outside [16, 32]")
        n = len(m.cohort)
        if not (2 <= m.threshold <= n and 2 <= m.min_survivors <= n and m.degree < n):
            raise MessageError("thresholds or degree inconsistent with the cohort")
        return m


@dataclass(frozen=True)
class AdvertiseKeys:
    TYPE: ClassVar[int] = 1
    sender: int
    c_public: bytes
    s_public: bytes
    commitment: bytes
    signature: bytes

    def _body(self) -> bytes:
        return _u32(self.sender) + _lp(self.c_public) + _lp(self.s_public) + _lp(self.commitment) + _lp(self.signature)

    @classmethod
    def _parse(cls, r: _Reader) -> "AdvertiseKeys":
        return cls(r.ident(), r.fixed(KEY_BYTES, "c_public"), r.fixed(KEY_BYTES, "s_public"),
                   r.fixed(32, "commitment"), r.fixed(SIGNATURE_BYTES, "signature"))


@dataclass(frozen=True)
class KeyRoster:
    TYPE: ClassVar[int] = 2
    adverts: tuple[AdvertiseKeys, ...]

    def _body(self) -> bytes:
        return _u32(len(self.adverts)) + b"".join(a._body() for a in self.adverts)

    @classmethod
    def _parse(cls, r: _Reader) -> "KeyRoster":
        adverts = tuple(AdvertiseKeys._parse(r) for _ in range(r.count()))
        _check_sorted([a.sender for a in adverts], "adverts")
        return cls(adverts)


def _pairs(v: tuple[tuple[int, bytes], ...]) -> bytes:
    return _u32(len(v)) + b"".join(_u32(i) + _lp(c) for i, c in v)


def _parse_pairs(r: _Reader, what: str) -> tuple[tuple[int, bytes], ...]:
    out = tuple((r.ident(), r.fixed(CIPHERTEXT_BYTES, "ciphertext")) for _ in range(r.count()))
    _check_sorted([i for i, _ in out], what)
    return out


@dataclass(frozen=True)
class ShareKeys:
    TYPE: ClassVar[int] = 3
    sender: int
    ciphertexts: tuple[tuple[int, bytes], ...]  # (receiver, AEAD ciphertext)

    def _body(self) -> bytes:
        return _u32(self.sender) + _pairs(self.ciphertexts)

    @classmethod
    def _parse(cls, r: _Reader) -> "ShareKeys":
        return cls(r.ident(), _parse_pairs(r, "receivers"))


@dataclass(frozen=True)
class ForwardedShares:
    TYPE: ClassVar[int] = 4
    ciphertexts: tuple[tuple[int, bytes], ...]  # (sender, AEAD ciphertext for the recipient)

    def _body(self) -> bytes:
        return _pairs(self.ciphertexts)

    @classmethod
    def _parse(cls, r: _Reader) -> "ForwardedShares":
        return cls(_parse_pairs(r, "senders"))


MASKED_HEADER = len(MAGIC) + 2 + 4 + 1 + 8    # "SFSA" ‖ version ‖ type ‖ u32 sender ‖ u8 k ‖ u64 P: 19 bytes
_ALIGN = 64                                    # the words start on a cache line


class MaskedBuffer:
    """A MaskedInput's wire bytes, allocated before its vector exists: ``vector`` is the (P,) ring-word
    view (zeroed, 64-byte aligned) that a holder fills (its masks are expanded into it while it trains,
    secagg.md §6.5, and x added in place), ``frame`` the 19 header bytes in front of it and the words.
    ``encode`` then writes the header, seals the buffer and hands out ``frame`` itself: the one copy a joined
    message costs (≈ 4 s per holder at 1.3B coordinates on the H200, RESULTS.md (r13)) is not made."""

    def __init__(self, length: int, ring_bits: int) -> None:
        if isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError("length must be a positive int")
        dt = np.dtype("<u2") if ring_bits <= 16 else np.dtype("<u4")
        raw = np.zeros(MASKED_HEADER + length * dt.itemsize + _ALIGN, dtype=np.uint8)   # calloc: pages on first touch
        off = (-(raw.ctypes.data + MASKED_HEADER)) % _ALIGN
        self._raw = raw
        self.frame = raw[off:off + MASKED_HEADER + length * dt.itemsize]
        self.vector = self.frame[MASKED_HEADER:].view(dt)
        self.ring_bits = ring_bits

    def seal(self) -> None:
        """No more writes: the message handed out is read-only all the way down (a receiver may keep it as
        its own undo record, transport.md §4.3); a write through any of these arrays now raises."""
        for a in (self.vector, self.frame, self._raw):
            a.flags.writeable = False


@dataclass(frozen=True, eq=False)
class MaskedInput:
    TYPE: ClassVar[int] = 5
    sender: int
    ring_bits: int
    vector: np.ndarray  # (P,) uint16 if ring_bits <= 16 else uint32, little-endian on the wire
    buffer: MaskedBuffer | None = None   # when ``vector`` is this buffer's: encoded in place, without a copy

    def _in_place(self) -> memoryview | None:
        """The whole message as a read-only view of ``buffer.frame`` (header written), or None if the
        vector does not live in a MaskedBuffer of this ring."""
        b = self.buffer
        if b is None or b.vector is not self.vector or b.ring_bits != self.ring_bits:
            return None
        prefix, _ = self._parts()             # the same checks and the same header bytes as the joined form
        header = np.frombuffer(MAGIC + bytes([VERSION, self.TYPE]) + prefix, dtype=np.uint8)
        if b.frame.flags.writeable:
            b.frame[:MASKED_HEADER] = header
            b.seal()
        elif not np.array_equal(b.frame[:MASKED_HEADER], header):   # sealed by an earlier encode: same message only
            raise MessageError("this MaskedBuffer was sealed with another sender's header")
        return memoryview(b.frame)

    def _parts(self) -> tuple:
        """The body as (prefix, the vector's own buffer), in place of the other messages' ``_body``: ``encode``
        joins them into the message with the one copy it cannot avoid (a 1.3B-coordinate vector is 5.3 GB;
        each extra copy cost ≈ 3 s per holder)."""
        v = self.vector
        dt = np.dtype("<u2") if self.ring_bits <= 16 else np.dtype("<u4")
        if not isinstance(v, np.ndarray) or v.ndim != 1 or v.dtype != dt:
            raise MessageError(f"vector must be a 1-D {dt} array")
        prefix = _u32(self.sender) + bytes([self.ring_bits]) + struct.pack(">Q", v.shape[0])
        return prefix, memoryview(np.ascontiguousarray(v)).cast("B")

    @classmethod
    def _parse(cls, r: _Reader) -> "MaskedInput":
        sender, k, p = r.ident(), r.u8(), r.u64()
        if not 16 <= k <= 32:
            raise MessageError("ring_bits outside [16, 32]")
        dt = np.dtype("<u2") if k <= 16 else np.dtype("<u4")
        if p > (len(r.buf) - r.pos) // dt.itemsize:
            raise MessageError("message is truncated")
        vec = np.frombuffer(r.take(p * dt.itemsize), dtype=dt)  # zero-copy, read-only
        if k not in (16, 32) and np.any(vec >> np.uint32(k)):
            raise MessageError(f"vector has elements outside Z_2^{k}")
        return cls(sender, k, vec)


@dataclass(frozen=True)
class SurvivorList:
    TYPE: ClassVar[int] = 6
    survivors: tuple[int, ...]

    def _body(self) -> bytes:
        return _ids(self.survivors)

    @classmethod
    def _parse(cls, r: _Reader) -> "SurvivorList":
        return cls(r.ids("survivors"))


@dataclass(frozen=True)
class ConsistencySignature:
    TYPE: ClassVar[int] = 7
    sender: int
    signature: bytes

    def _body(self) -> bytes:
        return _u32(self.sender) + _lp(self.signature)

    @classmethod
    def _parse(cls, r: _Reader) -> "ConsistencySignature":
        return cls(r.ident(), r.fixed(SIGNATURE_BYTES, "signature"))


@dataclass(frozen=True)
class UnmaskRequest:
    TYPE: ClassVar[int] = 8
    alive: tuple[int, ...]
    dropped: tuple[int, ...]
    signatures: tuple[tuple[int, bytes], ...]  # (signer, consistency signature)

    def _body(self) -> bytes:
        return _ids(self.alive) + _ids(self.dropped) + _u32(len(self.signatures)) + b"".join(
            _u32(i) + _lp(s) for i, s in self.signatures)

    @classmethod
    def _parse(cls, r: _Reader) -> "UnmaskRequest":
        alive, dropped = r.ids("alive"), r.ids("dropped")
        sigs = tuple((r.ident(), r.fixed(SIGNATURE_BYTES, "signature")) for _ in range(r.count()))
        _check_sorted([i for i, _ in sigs], "signers")
        return cls(alive, dropped, sigs)


@dataclass(frozen=True)
class UnmaskShares:
    TYPE: ClassVar[int] = 9
    sender: int
    shares: tuple[tuple[int, int, bytes], ...]  # (peer, KIND_B | KIND_S, 66-byte share)

    def _body(self) -> bytes:
        return _u32(self.sender) + _u32(len(self.shares)) + b"".join(
            _u32(j) + bytes([kind]) + _lp(s) for j, kind, s in self.shares)

    @classmethod
    def _parse(cls, r: _Reader) -> "UnmaskShares":
        sender, out = r.ident(), []
        for _ in range(r.count()):
            j, kind = r.ident(), r.u8()
            if kind not in (KIND_B, KIND_S):
                raise MessageError("share kind must be 0 (b) or 1 (s)")
            out.append((j, kind, r.fixed(SHARE_BYTES, "share")))
        _check_sorted([j for j, _, _ in out], "share peers")
        return cls(sender, tuple(out))


Message = (RoundStart | AdvertiseKeys | KeyRoster | ShareKeys | ForwardedShares | MaskedInput | SurvivorList
           | ConsistencySignature | UnmaskRequest | UnmaskShares)
_TYPES = {c.TYPE: c for c in (RoundStart, AdvertiseKeys, KeyRoster, ShareKeys, ForwardedShares, MaskedInput,
                              SurvivorList, ConsistencySignature, UnmaskRequest, UnmaskShares)}


def encode(msg: Message) -> bytes | memoryview:
    """Serialize one message (validated by a decode round trip for everything but vectors). A MaskedInput
    whose vector lives in a MaskedBuffer comes back as a read-only view of that buffer (the same bytes)."""
    if type(msg) not in _TYPES.values():
        raise TypeError(f"cannot encode {type(msg).__name__}")
    try:
        if isinstance(msg, MaskedInput) and (view := msg._in_place()) is not None:
            return view
        parts = msg._parts() if isinstance(msg, MaskedInput) else (msg._body(),)
        data = b"".join((MAGIC, bytes([VERSION, msg.TYPE]), *parts))
    except (struct.error, ValueError, TypeError, OverflowError) as e:
        raise MessageError(f"cannot encode {type(msg).__name__}: {e}") from None
    if not isinstance(msg, MaskedInput):
        decode(data)  # the encoder never emits what the decoder would reject
    return data


def decode(data: bytes) -> Message:
    """Parse and validate one message; MessageError on anything malformed."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise MessageError("message must be bytes")
    # bytes and read-only views (a MaskedBuffer's message) are parsed in place; a writable buffer is copied
    # first, so that what was parsed and checked cannot change underneath the caller
    stable = isinstance(data, bytes) or (isinstance(data, memoryview) and data.readonly)
    r = _Reader(data if stable else bytes(data))
    if bytes(r.take(4)) != MAGIC:
        raise MessageError("bad magic")
    if r.u8() != VERSION:
        raise MessageError("unsupported protocol version")
    cls = _TYPES.get(r.u8())
    if cls is None:
        raise MessageError("unknown message type")
    msg = cls._parse(r)
    if r.pos != len(r.buf):
        raise MessageError("trailing bytes after message")
    return msg

