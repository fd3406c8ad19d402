"""Frames: the only bytes that cross the gRPC service (protocols/transport.md §3, §4).

Every gRPC message is exactly one frame (``"SFTR" ‖ version ‖ type ‖ body``, big-endian integers).
A *stream* is one HEADER frame, CHUNK frames whose payloads concatenate to ``total_len`` bytes, and one
TRAILER frame with their SHA-256 (version 2: the sender hashes as it sends, not in a pass before). Chunks
are at most ``chunk_size`` ≤ MAX_CHUNK bytes, so no gRPC message comes near the transport's message cap,
however large the payload (a 1.3B-parameter update is ~5 GB).

The decoder validates magic, version, type, every length and value range, and rejects trailing
bytes; every failure is a ``FrameError`` (a ValueError) whose message names the field.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import IntEnum

__all__ = [
    "VERSION", "MAGIC", "MAX_CHUNK", "DEFAULT_CHUNK", "MAX_FRAME", "FrameError", "Kind", "FrameType",
    "Header", "Chunk", "Trailer", "FetchRequest", "Ack", "encode", "decode", "iter_stream_frames",
]

MAGIC = b"SFTR"
VERSION = 2                  # 2: the digest moved from the HEADER to a TRAILER frame (transport.md §3, §4.1)
MAX_CHUNK = 4 << 20          # 4 MiB: the largest payload one frame may carry
DEFAULT_CHUNK = 1 << 20      # 1 MiB
MAX_FRAME = MAX_CHUNK + 64   # header/chunk overhead < 64 bytes; gRPC's limits are set from this
MAX_REASON = 256
_PREFIX = struct.Struct(">4sBB")
_HEADER = struct.Struct(">16sIBBQI")         # run_id, round, stage, kind, total_len, chunk_size
_TRAILER = struct.Struct(">32s")             # SHA-256 of the stream's payload
_CHUNK = struct.Struct(">IQI")               # seq, offset, length
_FETCH = struct.Struct(">16sIBI")            # run_id, round, stage, wait_ms
_ACK = struct.Struct(">BH")                  # status, reason length


class FrameError(ValueError):
    """A frame or stream is malformed, oversized, truncated or fails its integrity check."""


class FrameType(IntEnum):
    HEADER = 1
    CHUNK = 2
    FETCH = 3
    ACK = 4
    TRAILER = 5


class Kind(IntEnum):
    """What a stream's payload is (protocols/transport.md §4.2)."""

    HELLO = 1          # C→S: join request (JSON, no secrets)
    WELCOME = 2        # S→C: run id, resolved config, next round (JSON)
    ROUND = 3          # S→C: round manifest (JSON: cohort, model hash, stage deadlines)
    MODEL = 4          # S→C: global model θ_r, float32 little-endian
    SECAGG = 5         # both: one serialized secagg message (protocols/secagg.md §7), carried unchanged
    MASKED = 6         # C→S: the MaskedInput message, streamed; folded into the running sum as it arrives
    RESULT = 7         # C→S: round report (JSON: tokens, loss, clip info, no data)
    WAIT = 8           # S→C: nothing for you yet / you are not in this round (JSON)
    STAGE = 9          # S→C: the holder's message of one stage of a round (securefed.federation)
    REPLY = 10         # C→S: the holder's reply to that stage


_MAX_STAGE = 255


@dataclass(frozen=True)
class Header:
    run_id: bytes
    round: int
    stage: int
    kind: Kind
    total_len: int
    chunk_size: int = DEFAULT_CHUNK

    def __post_init__(self) -> None:
        _check_bytes("run_id", self.run_id, 16)
        _check_int("round", self.round, 0, 2**32 - 1)
        _check_int("stage", self.stage, 0, _MAX_STAGE)
        if not isinstance(self.kind, Kind):
            raise FrameError("kind must be a transport Kind")
        _check_int("total_len", self.total_len, 0, 2**64 - 1)
        _check_int("chunk_size", self.chunk_size, 1, MAX_CHUNK)


@dataclass(frozen=True)
class Chunk:
    seq: int
    offset: int
    data: bytes

    def __post_init__(self) -> None:
        _check_int("seq", self.seq, 0, 2**32 - 1)
        _check_int("offset", self.offset, 0, 2**64 - 1)
        if not isinstance(self.data, (bytes, bytearray, memoryview)):
            raise FrameError("chunk data must be bytes")
        if not 0 < len(self.data) <= MAX_CHUNK:
            raise FrameError(f"chunk length {len(self.data)} outside [1, {MAX_CHUNK}]")


@dataclass(frozen=True)
class Trailer:
    """The end of a stream: SHA-256 of its payload, computed by the sender while it sent the chunks."""

    digest: bytes

    def __post_init__(self) -> None:
        _check_bytes("digest", self.digest, 32)


@dataclass(frozen=True)
class FetchRequest:
    """C→S: 'give me my stream for (round, stage)', long-polling up to wait_ms."""

    run_id: bytes
    round: int
    stage: int
    wait_ms: int = 30_000

    def __post_init__(self) -> None:
        _check_bytes("run_id", self.run_id, 16)
        _check_int("round", self.round, 0, 2**32 - 1)
        _check_int("stage", self.stage, 0, _MAX_STAGE)
        _check_int("wait_ms", self.wait_ms, 0, 600_000)


ACK_ALREADY_REPLIED = 2   # transport.md §4: a reply of this holder for this stage was already committed
ACK_TOO_LATE = 3          # transport.md §6.1: the stage this reply is for had ended when it arrived (not committed)


@dataclass(frozen=True)
class Ack:
    """S→C answer to a submitted stream: status 0 accepted; ACK_ALREADY_REPLIED: this holder's reply to the stage was
    already committed (by this client before a reconnect, or by another client with its identity, §6.3);
    ACK_TOO_LATE: the stage had ended (deadline) before this reply arrived or completed, and it counts for nothing
    (§6.1); else refused (reason is generic)."""

    status: int
    reason: str = ""

    def __post_init__(self) -> None:
        _check_int("status", self.status, 0, 255)
        if not isinstance(self.reason, str) or len(self.reason.encode()) > MAX_REASON:
            raise FrameError(f"ack reason must be a str of at most {MAX_REASON} bytes")


Frame = Header | Chunk | Trailer | FetchRequest | Ack


def _check_int(name: str, v: object, lo: int, hi: int) -> None:
    if not isinstance(v, int) or isinstance(v, bool):
        raise FrameError(f"{name} must be an int")
    if not lo <= v <= hi:
        raise FrameError(f"{name}={v} outside [{lo}, {hi}]")


def _check_bytes(name: str, v: object, n: int) -> None:
    if not isinstance(v, bytes) or len(v) != n:
        raise FrameError(f"{name} must be {n} bytes")


def encode(frame: Frame) -> bytes:
    """One frame → bytes (protocols/transport.md §3)."""
    if isinstance(frame, Header):
        body = _HEADER.pack(frame.run_id, frame.round, frame.stage, int(frame.kind), frame.total_len,
                            frame.chunk_size)
        return _PREFIX.pack(MAGIC, VERSION, FrameType.HEADER) + body
    if isinstance(frame, Trailer):
        return _PREFIX.pack(MAGIC, VERSION, FrameType.TRAILER) + _TRAILER.pack(frame.digest)
    if isinstance(frame, Chunk):
        return b"".join((_PREFIX.pack(MAGIC, VERSION, FrameType.CHUNK),
                         _CHUNK.pack(frame.seq, frame.offset, len(frame.data)), frame.data))
    if isinstance(frame, FetchRequest):
        return _PREFIX.pack(MAGIC, VERSION, FrameType.FETCH) + _FETCH.pack(frame.run_id, frame.round, frame.stage,
                                                                         frame.wait_ms)
    if isinstance(frame, Ack):
        reason = frame.reason.encode()
        return _PREFIX.pack(MAGIC, VERSION, FrameType.ACK) + _ACK.pack(frame.status, len(reason)) + reason
    raise TypeError(f"frame must be a Header, Chunk, Trailer, FetchRequest or Ack, not {type(frame).__name__}")


def decode(data: bytes) -> Frame:
    """bytes → one frame; FrameError on anything malformed (never another exception type)."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise FrameError("frame must be bytes")
    data = memoryview(data).cast("B")               # zero-copy: chunk data below is a view into the frame
    if len(data) > MAX_FRAME:
        raise FrameError(f"frame of {len(data)} bytes exceeds {MAX_FRAME}")
    if len(data) < _PREFIX.size:
        raise FrameError("frame shorter than its prefix")
    magic, version, ftype = _PREFIX.unpack_from(data)
    magic = bytes(magic)
    if magic != MAGIC:
        raise FrameError("bad magic")
    if version != VERSION:
        raise FrameError(f"unsupported frame version {version}")
    body = data[_PREFIX.size:]
    if ftype == FrameType.HEADER:
        _exact(body, _HEADER.size, "header")
        run_id, rnd, stage, kind, total, csize = _HEADER.unpack(bytes(body))
        try:
            kind = Kind(kind)
        except ValueError:
            raise FrameError(f"unknown stream kind {kind}") from None
        return Header(run_id, rnd, stage, kind, total, csize)
    if ftype == FrameType.TRAILER:
        _exact(body, _TRAILER.size, "trailer")
        return Trailer(*_TRAILER.unpack(bytes(body)))
    if ftype == FrameType.CHUNK:
        if len(body) < _CHUNK.size:
            raise FrameError("chunk frame shorter than its fields")
        seq, offset, length = _CHUNK.unpack_from(body)
        _exact(body, _CHUNK.size + length, "chunk")
        return Chunk(seq, offset, body[_CHUNK.size:])
    if ftype == FrameType.FETCH:
        _exact(body, _FETCH.size, "fetch")
        return FetchRequest(*_FETCH.unpack(bytes(body)))
    if ftype == FrameType.ACK:
        if len(body) < _ACK.size:
            raise FrameError("ack frame shorter than its fields")
        status, n = _ACK.unpack_from(body)
        _exact(body, _ACK.size + n, "ack")
        try:
            reason = bytes(body[_ACK.size:]).decode("utf-8")
        except UnicodeDecodeError:
            raise FrameError("ack reason is not UTF-8") from None
        return Ack(status, reason)
    raise FrameError(f"unknown frame type {ftype}")


def _exact(body: bytes, n: int, what: str) -> None:
    if len(body) != n:
        raise FrameError(f"{what} frame has {len(body)} body bytes, expected {n}")


def iter_stream_frames(run_id: bytes, round_index: int, stage: int, kind: Kind, parts: Iterable[bytes | memoryview],
                       *, total_len: int, chunk_size: int = DEFAULT_CHUNK,
                       digest: bytes | None = None) -> Iterator[bytes]:
    """Encoded HEADER, CHUNK frames re-cut from ``parts`` into chunk_size pieces, then the TRAILER (§4.1).

    The SHA-256 is taken chunk by chunk as the frames go out, so hashing overlaps sending instead of being a
    pass over the whole payload before the first byte leaves (at 1.3B coordinates, 5.3 GB per holder).
    ``digest``: a hash the caller already holds for exactly these bytes (the coordinator's θ, hashed once per
    round for every holder); the receiver checks it like any other, so a wrong one is a refused stream.
    """
    yield encode(Header(run_id, round_index, stage, kind, total_len, chunk_size))
    h = hashlib.sha256() if digest is None else None
    seq, offset, pending = 0, 0, bytearray()
    for part in parts:
        mv = memoryview(part).cast("B")
        while len(mv):
            if not pending and len(mv) >= chunk_size:      # fast path: no copy into the pending buffer
                piece, mv = mv[:chunk_size], mv[chunk_size:]
                if h is not None:
                    h.update(piece)
                yield encode(Chunk(seq, offset, piece))        # one copy: into the frame
                seq, offset = seq + 1, offset + len(piece)
                continue
            take = min(chunk_size - len(pending), len(mv))
            pending += mv[:take]
            mv = mv[take:]
            if len(pending) == chunk_size:
                if h is not None:
                    h.update(pending)
                yield encode(Chunk(seq, offset, bytes(pending)))
                seq, offset, pending = seq + 1, offset + len(pending), bytearray()
    if pending:
        if h is not None:
            h.update(pending)
        yield encode(Chunk(seq, offset, bytes(pending)))
        offset += len(pending)
    if offset != total_len:
        raise FrameError(f"payload has {offset} bytes, the header committed to {total_len}")
    yield encode(Trailer(h.digest() if h is not None else digest))


def sha256_parts(parts: Iterable[bytes | memoryview]) -> tuple[int, bytes]:
    h, n = hashlib.sha256(), 0
    for p in parts:
        h.update(p)
        n += memoryview(p).nbytes
    return n, h.digest()
