"""The streamed ring sum: chunk-wise folding equals the whole-vector sum; failed streams leave no trace."""

import threading

import numpy as np
import pytest

from securefed.secagg.messages import MaskedInput, encode as sa_encode
from securefed.transport.accumulate import MASKED_PREFIX, RingAccumulator
from securefed.transport.frames import FrameError


def _msg(sender, vec, k=32):
    return sa_encode(MaskedInput(sender, k, vec))


def _feed(fold, data, cuts):
    off = 0
    for c in cuts:
        fold.write(off, data[off:c])
        off = c
    fold.write(off, data[off:])


@pytest.mark.parametrize("k,dtype", [(32, np.uint32), (16, np.uint16), (24, np.uint32)])
def test_fold_at_odd_chunk_boundaries_equals_ring_sum(tmp_path, k, dtype):
    rng = np.random.default_rng(0)
    P = 1001
    vecs = {i: rng.integers(0, 1 << k, P, dtype=np.uint64).astype(dtype) for i in (1, 2, 3)}
    acc = RingAccumulator(P, k, tmp_path)
    for i, v in vecs.items():
        data = _msg(i, v, k)
        fold = acc.open(i)
        _feed(fold, data, [1, 7, MASKED_PREFIX, MASKED_PREFIX + 3, 500, 2001, len(data) - 1])
        fold.commit()
    expect = sum(v.astype(np.uint64) for v in vecs.values()) % (1 << k)   # exact sum mod 2^k
    assert np.array_equal(acc.total.astype(np.uint64), expect)
    assert acc.committed == {1, 2, 3}
    assert not list(tmp_path.iterdir())                                     # undo journals deleted


def test_aborted_stream_is_subtracted_back_out(tmp_path):
    P = 5000
    a, b = np.arange(P, dtype=np.uint32), np.full(P, 0xFFFFFFF0, dtype=np.uint32)
    acc = RingAccumulator(P, 32, tmp_path)
    f = acc.open(1)
    f.write(0, _msg(1, a))
    f.commit()
    half = _msg(2, b)[: MASKED_PREFIX + 4 * 3000 + 2]                      # truncated mid-word
    g = acc.open(2)
    g.write(0, half)
    assert not np.array_equal(acc.total, a)                                  # partially folded ...
    g.abort()
    assert np.array_equal(acc.total, a)                                      # ... and undone exactly
    assert acc.committed == {1}


def test_commit_of_incomplete_stream_fails_and_undoes(tmp_path):
    acc = RingAccumulator(10, 32, tmp_path)
    f = acc.open(1)
    f.write(0, _msg(1, np.ones(10, np.uint32))[:-4])
    with pytest.raises(FrameError, match="incomplete"):
        f.commit()
    assert not acc.total.any()


def test_seal_undoes_inflight_and_refuses_late_commit(tmp_path):
    acc = RingAccumulator(10, 32, tmp_path)
    data = _msg(4, np.full(10, 7, np.uint32))
    f = acc.open(4)
    f.write(0, data[:30])
    acc.seal()
    assert not acc.total.any()
    with pytest.raises(FrameError):
        f.write(30, data[30:])
    with pytest.raises(FrameError):
        acc.open(5)


@pytest.mark.parametrize("sender,k,P,msg", [(2, 32, 10, "sender"), (1, 16, 10, "ring bits"), (1, 32, 11, "length")])
def test_prefix_checked_before_any_word_is_folded(tmp_path, sender, k, P, msg):
    acc = RingAccumulator(10, 32, tmp_path)
    dt = np.uint16 if k <= 16 else np.uint32
    f = acc.open(1)
    with pytest.raises(FrameError, match=msg):
        f.write(0, _msg(sender, np.ones(P, dt), k))
    f.abort()
    assert not acc.total.any()


def test_one_stream_per_holder(tmp_path):
    acc = RingAccumulator(4, 32, tmp_path)
    acc.open(1)
    with pytest.raises(FrameError, match="already"):
        acc.open(1)


def test_concurrent_folds_do_not_lose_updates(tmp_path):
    P, n = 200_000, 6
    acc = RingAccumulator(P, 32, tmp_path)
    vecs = [np.full(P, i + 1, np.uint32) for i in range(n)]

    def go(i):
        data = _msg(i + 1, vecs[i])
        f = acc.open(i + 1)
        for off in range(0, len(data), 4099):
            f.write(off, data[off:off + 4099])
        f.commit()
    threads = [threading.Thread(target=go, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert np.all(acc.total == n * (n + 1) // 2)                              # 1+2+...+6 = 21


def test_over_existing_array(tmp_path):
    total = np.zeros(8, np.uint32)
    acc = RingAccumulator.over(total, 32, tmp_path)
    f = acc.open(3)
    f.write(0, _msg(3, np.arange(8, dtype=np.uint32)))
    f.commit()
    assert np.array_equal(total, np.arange(8))
    with pytest.raises(TypeError):
        RingAccumulator.over(np.zeros(8, np.uint16), 32, tmp_path)


def test_protocol_refusing_the_sender_undoes_the_fold(tmp_path):
    acc = RingAccumulator(6, 32, tmp_path)

    def refuse(sender):
        raise FrameError("not expected")
    f = acc.open(2, on_commit=refuse)
    f.write(0, _msg(2, np.full(6, 9, np.uint32)))
    with pytest.raises(FrameError):
        f.commit()
    assert not acc.total.any() and acc.committed == set()


@pytest.mark.parametrize("k,dtype", [(32, np.uint32), (20, np.uint32), (16, np.uint16)])
def test_a_whole_reply_is_its_own_undo_record(tmp_path, k, dtype):
    """The in-process channel hands over a masked input as one bytes object: folded without a disk journal,
    and still subtracted back out exactly when the protocol refuses the sender or the stage seals first."""
    rng = np.random.default_rng(1)
    P = 777
    a, b = (rng.integers(0, 1 << k, P, dtype=np.uint64).astype(dtype) for _ in range(2))
    acc = RingAccumulator(P, k, tmp_path)
    f = acc.open(1)
    f.write(0, _msg(1, a, k))
    assert not list(tmp_path.iterdir())                                     # no journal written
    f.commit()

    def refuse(sender):
        raise ValueError("not expected now")
    g = acc.open(2, on_commit=refuse)
    g.write(0, _msg(2, b, k))
    with pytest.raises(FrameError):
        g.commit()
    assert np.array_equal(acc.total, a) and acc.committed == {1}
    h = acc.open(3)
    h.write(0, _msg(3, b, k))
    acc.seal()                                                              # the stage closed before its commit
    assert np.array_equal(acc.total, a) and not list(tmp_path.iterdir())


@pytest.mark.parametrize("k,dtype", [(32, np.uint32), (20, np.uint32), (16, np.uint16)])
def test_threaded_fold_and_undo_are_the_ring_sum(tmp_path, threaded_spans, k, dtype):
    """A whole input is folded across threads (spans.py): the same ring sum, and the same exact undo."""
    rng = np.random.default_rng(k)
    P = 1001
    a, b = (rng.integers(0, 1 << k, P, dtype=np.uint64).astype(dtype) for _ in range(2))
    acc = RingAccumulator(P, k, tmp_path)
    f = acc.open(1)
    f.write(0, _msg(1, a, k))
    f.commit()
    g = acc.open(2)
    g.write(0, _msg(2, b, k))
    assert np.array_equal(acc.total, ((a.astype(np.uint64) + b) % (1 << k)).astype(dtype))
    g.abort()
    assert np.array_equal(acc.total, a) and acc.committed == {1}


def test_a_read_only_view_is_its_own_undo_record_and_a_writable_one_is_journalled(tmp_path):
    """A holder's MaskedBuffer reply (secagg/messages.py) arrives as a read-only view: like bytes, no journal.
    A writable buffer could change before its commit, so it is journalled like a streamed chunk."""
    rng = np.random.default_rng(7)
    P = 513
    a, b = (rng.integers(0, 1 << 32, P, dtype=np.uint64).astype(np.uint32) for _ in range(2))
    acc = RingAccumulator(P, 32, tmp_path)
    ro = memoryview(_msg(1, a)).toreadonly()
    f = acc.open(1)
    f.write(0, ro)
    assert f.whole is not None and not list(tmp_path.iterdir())
    f.commit()
    g = acc.open(2)
    g.write(0, memoryview(bytearray(_msg(2, b))))
    assert g.whole is None and list(tmp_path.iterdir())                    # journalled
    g.abort()
    assert np.array_equal(acc.total, a) and not list(tmp_path.iterdir())


class _FullDisk:
    """An undo journal on a disk that fills up: writes are buffered (as io.BufferedWriter's are) and reach the file
    at flush(); once ``full`` is set a flush fails with ENOSPC and what it held is lost; close() flushes, then closes."""

    full = False

    def __init__(self, f):
        self.f, self.pending = f, []

    def write(self, data):
        self.pending.append(bytes(data))
        return len(data)

    def flush(self):
        pending, self.pending = self.pending, []
        if _FullDisk.full:
            import errno
            raise OSError(errno.ENOSPC, "No space left on device")
        for p in pending:
            self.f.write(p)
        self.f.flush()

    def close(self):
        try:
            self.flush()
        finally:
            self.f.close()


def _journal_on_full_disk(monkeypatch):
    from securefed.transport import accumulate

    real = accumulate.MaskedFold._journal
    monkeypatch.setattr(_FullDisk, "full", False)
    monkeypatch.setattr(accumulate.MaskedFold, "_journal",
                        lambda self: self.journal if isinstance(self.journal, _FullDisk) else
                        setattr(self, "journal", _FullDisk(real(self))) or self.journal)


def test_a_journal_write_the_disk_refuses_is_never_folded_and_the_rest_is_undone(tmp_path, monkeypatch):
    """§4.3: the words were folded right after a *buffered* journal write; when the spool's disk then filled up, the
    flush at abort raised before a word was read back, and the whole partial fold stayed in the sum (the round's
    unmasking wrong). A word is now folded only once its undo record is on disk, and abort undoes what was."""
    _journal_on_full_disk(monkeypatch)
    P = 3000
    data = _msg(1, np.arange(1, P + 1, dtype=np.uint32))
    acc = RingAccumulator(P, 32, tmp_path)
    f = acc.open(1)
    f.write(0, data[:2000])
    _FullDisk.full = True
    with pytest.raises(OSError):
        f.write(2000, data[2000:4000])
        f.write(4000, data[4000:])             # (before: no error while streaming; the stream then fails anyway)
        raise OSError("the stream failed")
    f.abort()
    assert not acc.total.any()
    assert acc.committed == set()


def test_a_committed_masked_input_is_answered_accepted_whatever_its_journals_cleanup_says(tmp_path, monkeypatch):
    """transport.md §6.1: status 0 if and only if the reply was committed. The fold's commit dropped its spent undo
    journal after accepting the sender; an error there (closing it: ENOSPC) escaped rx.finish(), and the board
    answered status 1 and marked the holder failed while secagg had accepted it and its words were in the sum."""
    from securefed.transport.accumulate import masked_prefix
    from securefed.transport.board import StageBoard
    from securefed.transport.frames import Kind, decode, iter_stream_frames

    _journal_on_full_disk(monkeypatch)
    P = 1000
    payload = masked_prefix(1, 32, P) + np.arange(1, P + 1, dtype="<u4").tobytes()
    b = StageBoard(b"r" * 16, chunk_size=1 << 20)
    acc, accepted = RingAccumulator(P, 32, tmp_path), []

    def on_commit(sender):
        accepted.append(sender)
        _FullDisk.full = True                  # the disk fills up in the instant after the commit
    b.open_round(1, [1])
    b.publish(2, {1: b""}, reply=True, sink=lambda h: acc.open(h, on_commit=on_commit), max_reply=len(payload))
    frames = iter_stream_frames(b.run_id, 1, 2, Kind.REPLY, [payload], total_len=len(payload), chunk_size=1000)
    assert decode(b.submit(1, frames, None)).status == 0
    assert accepted == [1] and acc.committed == {1} and b.done == {1} and b.failed == set()
    assert np.array_equal(acc.total, np.arange(1, P + 1, dtype=np.uint32))
