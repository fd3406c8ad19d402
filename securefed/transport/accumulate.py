"""The round's running ring sum of masked inputs, folded chunk by chunk (protocols/transport.md §4.3).

    total ← total + y_i   (mod 2^k), element-wise, as y_i's chunks arrive

Memory: one (P,) array for the whole round, whatever n is — never n buffered updates. A stream that
fails after some chunks were folded (truncated, wrong hash, connection lost, deadline) must leave no
trace in the sum, else the round's unmasking is wrong. Each fold is therefore also appended to an
on-disk *undo journal* (the masked words, which the server sees anyway); ``abort()`` reads it back and
subtracts, ``commit()`` deletes it. Disk, not RAM, holds the in-flight streams — except a reply handed
over whole as one immutable ``bytes`` or read-only view (the in-process and Ray channels' ``deliver``,
which commits right after the write): those words are already in memory and do not change before the
commit, so they are their own undo record (no P-word copy to disk).

The MaskedInput byte layout is the secagg serializer's (protocols/secagg.md §7): a 19-byte prefix
``"SFSA" ‖ u8(1) ‖ u8(5) ‖ u32(sender) ‖ u8(k) ‖ u64(P)`` then P little-endian words. The prefix is
checked as soon as its 19 bytes are in (sender = the TLS-authenticated holder, k and P as the round
says), before any word is folded.
"""

from __future__ import annotations

import logging
import os
import struct
import tempfile
import threading
from pathlib import Path

import numpy as np

from securefed.primitives.spans import for_spans
from securefed.secagg.messages import MASKED_HEADER
from securefed.transport.frames import FrameError

__all__ = ["RingAccumulator", "MaskedFold", "MASKED_PREFIX", "masked_prefix"]

MASKED_PREFIX = MASKED_HEADER     # the secagg serializer's header (secagg/messages.py), 19 bytes
log = logging.getLogger("securefed.transport.accumulate")

_PREFIX = struct.Struct(">4sBBIBQ")
_MASKED_TYPE = 5


def masked_prefix(sender: int, ring_bits: int, length: int) -> bytes:
    return _PREFIX.pack(b"SFSA", 1, _MASKED_TYPE, sender, ring_bits, length)


class RingAccumulator:
    """Σ y_i mod 2^k over committed streams; thread-safe folds; undo journals under ``spool``."""

    def __init__(self, length: int, ring_bits: int, spool: str | Path) -> None:
        if not isinstance(length, int) or length < 1:
            raise ValueError("length must be a positive int")
        if not isinstance(ring_bits, int) or not 16 <= ring_bits <= 32:
            raise ValueError("ring_bits must be in [16, 32]")
        self.length, self.ring_bits = length, ring_bits
        self.dtype = np.dtype("<u2") if ring_bits <= 16 else np.dtype("<u4")
        self.mask = None if ring_bits in (16, 32) else self.dtype.type((1 << ring_bits) - 1)
        self.total = np.zeros(length, dtype=self.dtype)             # (P,) ring elements
        self.spool = Path(spool)
        self.spool.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.committed: set[int] = set()
        self.sealed = False
        self._open: set[MaskedFold] = set()
        self._lock = threading.Lock()

    @classmethod
    def over(cls, total: np.ndarray, ring_bits: int, spool: str | Path) -> "RingAccumulator":
        """Fold into an existing (P,) ring array (e.g. SecAggServer.total) instead of a fresh one."""
        acc = cls(1, ring_bits, spool)
        if not isinstance(total, np.ndarray) or total.ndim != 1 or total.dtype != acc.dtype:
            raise TypeError(f"total must be a 1-D {acc.dtype} array")
        acc.length, acc.total = total.shape[0], total
        return acc

    def seal(self) -> None:
        """End of the stage: refuse new streams, undo every uncommitted one now (§4.3)."""
        with self._lock:
            self.sealed = True
            pending = list(self._open)
        for fold in pending:
            fold.abort()

    def _apply(self, start: int, words: np.ndarray, sign: int) -> None:
        op = np.add if sign > 0 else np.subtract       # wraps mod 2^16 / 2^32 (unsigned overflow)

        def span(lo: int, hi: int) -> None:            # a whole input (P words) runs across the cores
            view = self.total[start + lo:start + hi]
            op(view, words[lo:hi], out=view)
            if self.mask is not None:
                np.bitwise_and(view, self.mask, out=view)
        with self._lock:
            for_spans(words.size, span)

    def open(self, sender: int, on_commit=None) -> "MaskedFold":
        with self._lock:
            if self.sealed:
                raise FrameError("the masked-input stage is closed")
            if sender in self.committed or any(f.sender == sender for f in self._open):
                raise FrameError("a masked input from this holder is already in")
            fold = MaskedFold(self, sender, on_commit)
            self._open.add(fold)
            return fold


def _stable(data) -> bool:
    """A reply handed over whole that cannot change before its commit: ``bytes``, or a read-only view (an
    in-process holder's sealed MaskedBuffer, secagg/messages.py; a Ray object-store array): its own undo
    record. Anything else (a writable buffer) is journalled like a streamed chunk."""
    return isinstance(data, bytes) or (isinstance(data, memoryview) and data.readonly)


class MaskedFold:
    """A Sink (securefed.transport.stream) for one holder's MaskedInput stream."""

    def __init__(self, acc: RingAccumulator, sender: int, on_commit=None) -> None:
        self.acc, self.sender, self.on_commit = acc, sender, on_commit
        self._lock = threading.Lock()            # a write and a seal-time abort never interleave
        self.prefix = bytearray()
        self.carry = b""                 # < word-size bytes split across two chunks
        self.next_elem = 0
        self.journal_path, self.journal = None, None       # opened at the first partial fold
        self.whole: np.ndarray | None = None              # a whole stream's words: its own undo record
        self.done = False

    def _journal(self):
        if self.journal is None:
            fd, path = tempfile.mkstemp(prefix=f"undo-{self.sender}-", dir=self.acc.spool)
            self.journal_path, self.journal = Path(path), os.fdopen(fd, "wb")
        return self.journal

    def write(self, offset: int, data: bytes) -> None:
        with self._lock:
            self._write(data)

    def _write(self, data: bytes) -> None:
        if self.done:
            raise FrameError("masked stream already closed")
        mv = memoryview(data)
        if len(self.prefix) < MASKED_PREFIX:
            take = min(MASKED_PREFIX - len(self.prefix), len(mv))
            self.prefix += mv[:take]
            mv = mv[take:]
            if len(self.prefix) == MASKED_PREFIX:
                self._check_prefix()
        if not len(mv):
            return
        w = self.acc.dtype.itemsize
        buf = self.carry + bytes(mv) if self.carry else mv
        usable = (len(buf) // w) * w
        self.carry = bytes(buf[usable:])
        if usable == 0:
            return
        words = np.frombuffer(buf[:usable], dtype=self.acc.dtype)
        if self.next_elem + words.size > self.acc.length:
            raise FrameError("masked input is longer than the model")
        if self.acc.mask is not None and np.any(words > self.acc.mask):
            raise FrameError(f"masked input has elements outside Z_2^{self.acc.ring_bits}")
        if _stable(data) and self.next_elem == 0 and words.size == self.acc.length and not self.carry:
            self.whole = words                          # the whole input, immutable: kept as the undo record
        else:   # undo record first, then fold: flushed, so a word is folded only once its record is on disk (a
            j = self._journal()                         # full spool fails this stream here, not its undo later)
            j.write(buf[:usable])
            j.flush()
        self.acc._apply(self.next_elem, words, +1)
        self.next_elem += words.size

    def _check_prefix(self) -> None:
        magic, ver, mtype, sender, k, p = _PREFIX.unpack(bytes(self.prefix))
        if magic != b"SFSA" or ver != 1 or mtype != _MASKED_TYPE:
            raise FrameError("masked stream is not a secagg v1 MaskedInput")
        if sender != self.sender:
            raise FrameError("MaskedInput sender differs from the authenticated holder")
        if k != self.acc.ring_bits or p != self.acc.length:
            raise FrameError("MaskedInput ring bits or length differ from the round's")

    def _complete(self) -> bool:
        return len(self.prefix) == MASKED_PREFIX and not self.carry and self.next_elem == self.acc.length

    def check(self) -> None:
        """FrameError if the input is incomplete, undoing nothing: the caller refuses it (and aborts) before taking
        the lock it commits under (stream.StreamReceiver.check)."""
        with self._lock:
            if not self.done and not self._complete():
                raise FrameError("masked input is incomplete")

    def commit(self) -> None:
        """Accept the (verified) stream: atomically with respect to ``seal`` (the stage closing)."""
        with self._lock:
            if self.done:
                raise FrameError("masked stream already closed")
            complete = self._complete()
            with self.acc._lock:
                if complete and not self.acc.sealed:
                    try:             # the protocol must accept the sender first, else the words come back out
                        if self.on_commit is not None:
                            self.on_commit(self.sender)
                        accepted = True
                    except (FrameError, ValueError):
                        accepted = False
                    if accepted:
                        self.done = True
                        self.acc._open.discard(self)
                        self.acc.committed.add(self.sender)
            if not self.done:
                self._abort_locked()
                raise FrameError("masked input is incomplete or arrived after the stage closed")
        self._drop_journal()

    def _drop_journal(self) -> None:
        """Let the spent journal go. Best effort: the fold is committed or undone by now, and an error here (a
        full or failing spool) must not turn either into its opposite (transport.md §6.1: status 0 iff committed)."""
        self.whole = None
        if self.journal is not None:
            try:
                self.journal.close()
            except OSError as e:
                log.warning("holder %d: closing a spent undo journal failed: %s", self.sender, e)
            try:
                self.journal_path.unlink(missing_ok=True)
            except OSError as e:
                log.warning("holder %d: could not delete the spent undo journal %s: %s", self.sender,
                            self.journal_path, e)

    def abort(self) -> None:
        """Subtract every folded word back out (read from the undo journal), then delete it."""
        with self._lock:
            self._abort_locked()

    def _abort_locked(self) -> None:
        if self.done:
            return
        self.done = True
        with self.acc._lock:
            self.acc._open.discard(self)
        if self.whole is not None:
            self.acc._apply(0, self.whole, -1)
        if self.journal is not None:
            try:
                self.journal.close()
            except OSError:          # only a record that never reached the disk: its words were never folded
                pass
            chunk = 1 << 20                             # elements per read: bounded memory
            with open(self.journal_path, "rb") as f:
                start = 0
                while True:
                    raw = f.read(chunk * self.acc.dtype.itemsize)
                    if not raw:
                        break
                    words = np.frombuffer(raw, dtype=self.acc.dtype)
                    self.acc._apply(start, words, -1)
                    start += words.size
        self._drop_journal()
