"""Receiving streams: order, bounds and integrity checks (protocols/transport.md §4).

``StreamReceiver`` consumes decoded frames of one stream: the header must be the expected one (run,
round, stage, kind; total_len within the receiver's cap), chunks must arrive in order with contiguous
offsets, no byte past total_len; then the TRAILER, whose SHA-256 must match the bytes received, and
``finish()``. Payload bytes go to a *sink* as they arrive:

- ``BytesSink``: collects a small payload (secagg control messages, JSON) — used only after
  ``finish()`` has verified it;
- ``BufferSink``: one large payload of a known size (a holder's θ) into one buffer allocated up front;
- ``securefed.transport.accumulate.MaskedFold``: folds a MaskedInput's ring words into the round's
  running sum as they arrive, with an undo journal, so a stream that later fails is subtracted back
  out (memory O(P) for the whole round, §4.3).

``FrameReader`` reads an incoming stream's frames in a thread of its own, so that the coordinator can stop
waiting for a reply stream the instant its stage closes and answer it "too late" (§6.1) — a handler blocked
on gRPC's request iterator can only be freed by cancelling the call.
"""

from __future__ import annotations

import hashlib
import hmac
import threading
from collections.abc import Iterator
from typing import Protocol

from securefed.transport.frames import Chunk, FrameError, Header, Kind, Trailer

__all__ = ["Sink", "BytesSink", "BufferSink", "StreamReceiver", "expect_header", "FrameReader", "ReadStopped"]


class Sink(Protocol):
    def write(self, offset: int, data: bytes) -> None: ...
    def abort(self) -> None: ...
    def commit(self) -> None: ...


class BytesSink:
    """Collect a payload of at most ``cap`` bytes in memory. A payload that arrives in one piece (the
    in-process channel delivers whole replies) is kept as the immutable ``bytes`` it came in, not copied
    twice through a bytearray: at 125m × 8 holders that was 6.7 GB of copies per round."""

    def __init__(self, cap: int) -> None:
        self.cap, self._buf = cap, bytearray()
        self._whole: bytes | None = None      # the first piece, while it is the only one
        self.value: bytes | None = None

    def write(self, offset: int, data: bytes) -> None:
        have = len(self._whole) if self._whole is not None else len(self._buf)
        if offset != have or have + len(data) > self.cap:
            raise FrameError("payload exceeds the receiver's cap")
        if have == 0 and type(data) is bytes:
            self._whole = data
            return
        if self._whole is not None:
            self._buf, self._whole = bytearray(self._whole), None
        self._buf += data

    def abort(self) -> None:
        self._buf, self._whole = bytearray(), None

    def commit(self) -> None:
        self.value = self._whole if self._whole is not None else bytes(self._buf)
        self._buf, self._whole = bytearray(), None


class BufferSink:
    """Collect a payload of exactly ``size`` bytes into one buffer allocated up front, and hand that writable
    ``bytearray`` over as ``value``: no growing buffer, no final copy into ``bytes``. For the one large payload
    a holder fetches every round, θ (4·P bytes: 352 MB at 125m, 5.3 GB at 1.3b), where ``BytesSink``'s growth and
    final copy took 0.50 s per 352 MB against 0.29 s (RESULTS.md (y13)), and a writable buffer lets the holder
    read θ without copying it once more."""

    def __init__(self, size: int) -> None:
        self._buf = bytearray(size)
        self._view = memoryview(self._buf)
        self.value: bytearray | None = None

    def write(self, offset: int, data: bytes) -> None:
        n = memoryview(data).nbytes
        if offset + n > len(self._buf):
            raise FrameError("payload exceeds the receiver's buffer")
        self._view[offset:offset + n] = data

    def abort(self) -> None:
        self._view.release()
        self._buf = bytearray()

    def commit(self) -> None:
        self._view.release()
        self.value, self._buf = self._buf, bytearray()


def expect_header(h: object, *, run_id: bytes, round_index: int, stage: int | None, kinds: tuple[Kind, ...],
                  max_len: int) -> Header:
    """Check a stream header against what this receiver expects (§4.2; ``stage`` None: the caller
    checks it); FrameError otherwise."""
    if not isinstance(h, Header):
        raise FrameError("stream must start with a header frame")
    if not hmac.compare_digest(h.run_id, run_id):
        raise FrameError("stream is for another run")
    if h.round != round_index:
        raise FrameError(f"stream is for round {h.round}, expected {round_index}")
    if stage is not None and h.stage != stage:
        raise FrameError(f"stream is for stage {h.stage}, expected {stage}")
    if h.kind not in kinds:
        raise FrameError(f"stream kind {h.kind.name} not accepted here")
    if h.total_len > max_len:
        raise FrameError(f"stream of {h.total_len} bytes exceeds the cap of {max_len}")
    return h


class StreamReceiver:
    """One stream: feed its chunk frames and its trailer, then ``finish()``. Any error aborts the sink (§4.2)."""

    def __init__(self, header: Header, sink: Sink) -> None:
        self.header, self.sink = header, sink
        self.received, self.next_seq = 0, 0
        self._hash = hashlib.sha256()
        self.verified = False           # the trailer came, after every byte, and its SHA-256 matched
        self.closed = False

    def feed(self, frame: object) -> None:
        if self.closed:
            raise FrameError("stream already closed")
        try:
            if self.verified:
                raise FrameError("frame after the stream's trailer")
            if isinstance(frame, Trailer):
                self._check_trailer(frame)
                return
            if not isinstance(frame, Chunk):
                raise FrameError("expected a chunk or trailer frame")
            if frame.seq != self.next_seq or frame.offset != self.received:
                raise FrameError(f"chunk {frame.seq} at offset {frame.offset} out of order")
            n = len(frame.data)
            if n > self.header.chunk_size:
                raise FrameError(f"chunk of {n} bytes exceeds the stream's chunk size {self.header.chunk_size}")
            if self.received + n > self.header.total_len:
                raise FrameError("stream is longer than its header says")
            self._hash.update(frame.data)
            self.sink.write(self.received, frame.data)     # a view into the frame: sinks copy what they keep
            self.received += n
            self.next_seq += 1
        except BaseException:
            self._fail()
            raise

    def _check_trailer(self, t: Trailer) -> None:
        if self.received != self.header.total_len:
            raise FrameError(f"stream truncated: {self.received} of {self.header.total_len} bytes")
        if not hmac.compare_digest(self._hash.digest(), t.digest):
            raise FrameError("stream SHA-256 does not match its trailer")
        self.verified = True

    def check(self) -> None:
        """What ``finish()`` requires — every byte came and the trailer verified them, and the sink's own ``check()``
        where it has one (a masked input: every word of the model) — raising FrameError *without* undoing the sink.
        So a caller that commits under a lock (the coordinator's board, §6.1) refuses an incomplete stream first and
        undoes it (``abort()``, reading back a journal of up to 4·P bytes) outside that lock."""
        if self.closed:
            raise FrameError("stream already closed")
        self._whole()
        check = getattr(self.sink, "check", None)
        if check is not None:
            check()

    def _whole(self) -> None:
        if self.received != self.header.total_len:
            raise FrameError(f"stream truncated: {self.received} of {self.header.total_len} bytes")
        if not self.verified:
            raise FrameError("stream ended without its trailer")

    def finish(self) -> None:
        """The stream ended: commit the sink only if every byte came and the trailer verified them (§4.2)."""
        if self.closed:
            raise FrameError("stream already closed")
        try:
            self._whole()
            self.sink.commit()
            self.closed = True
        except BaseException:
            self._fail()
            raise

    def abort(self) -> None:
        """The connection broke or a deadline passed: undo whatever the sink took."""
        if not self.closed:
            self._fail()

    def _fail(self) -> None:
        self.closed = True
        self.sink.abort()


class ReadStopped(Exception):
    """``FrameReader.stop()`` was called: the stream's reader no longer waits for its frames."""


class FrameReader:
    """The frames of one incoming stream, read by a thread of its own (protocols/transport.md §6.1).

    gRPC's request iterator has no timeout: a handler waiting for a stalled sender's next frame can be freed only by
    cancelling the call, and the sender then sees CANCELLED, not the coordinator's answer. Here the handler waits on
    this reader instead, and ``stop()`` (the stage closed) wakes it at once with ``ReadStopped``: it undoes what the
    stream delivered and returns its answer, which ends the call; the reading thread ends with the call (gRPC ends
    the request iterator). At most one frame waits here (≤ MAX_FRAME bytes); flow control keeps the rest at the
    sender. Errors of the iterator (a lost connection) are raised in the consumer, as if it read them itself.
    """

    def __init__(self, frames: Iterator[bytes]) -> None:
        self._frames = frames
        self._cond = threading.Condition()
        self._frame: bytes | None = None
        self._end: BaseException | None = None   # StopIteration at the stream's end, else what reading raised
        self._stopped = False

    def start(self) -> "FrameReader":
        threading.Thread(target=self._read, name="frame-reader", daemon=True).start()
        return self

    def _read(self) -> None:
        end: BaseException = StopIteration()
        try:
            for raw in self._frames:
                with self._cond:
                    self._cond.wait_for(lambda: self._frame is None or self._stopped)
                    if self._stopped:
                        return
                    self._frame = raw
                    self._cond.notify_all()
        except BaseException as e:   # noqa: BLE001 - handed to the consumer, which decides
            end = e
        with self._cond:
            self._end = end
            self._cond.notify_all()

    def stop(self) -> None:
        """Stop waiting: the consumer's next (or current) wait raises ReadStopped; a frame held is dropped."""
        with self._cond:
            self._stopped, self._frame = True, None
            self._cond.notify_all()

    def take(self, timeout: float | None = None) -> bytes:
        """The next frame. StopIteration at the stream's end, ReadStopped once stopped, TimeoutError when no frame
        came within ``timeout`` seconds (the reader is stopped then: a header that never comes, §6.1)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._frame is not None or self._end is not None or self._stopped,
                                       timeout=timeout):
                self._stopped, self._frame = True, None
                self._cond.notify_all()
                raise TimeoutError(f"no frame within {timeout:g} s")
            if self._stopped:
                raise ReadStopped()
            if self._frame is not None:
                raw, self._frame = self._frame, None
                self._cond.notify_all()
                return raw
            if isinstance(self._end, StopIteration):
                raise StopIteration
            raise self._end

    def __iter__(self) -> Iterator[bytes]:
        while True:
            try:
                raw = self.take()
            except StopIteration:
                return
            yield raw
