"""The coordinator's stage mailboxes behind the gRPC service (protocols/transport.md §5, §6).

Generic: it knows rounds, stages, holders, streams and deadlines — not what a stage means (that is
securefed.federation). The driver publishes one message per addressed holder for a stage and waits
until every addressed holder has submitted its reply or the deadline has passed; a holder long-polls
``Fetch(round, from_stage)`` for its first message at a stage ≥ ``from_stage`` and submits its reply
to that stage. Replies stream into a per-holder sink (``stream.Sink``): a bounded ``BytesSink`` for
control messages, or the driver's own (the masked-input fold of ``accumulate``).

A fetch answers WAIT (JSON) with a reason when there is nothing for the holder:

    not_open        the round has not opened yet (ask again)
    not_yet         the holder is in the round, its next message is not published yet (ask again)
    not_in_cohort   the holder is not in this round; ``next_round`` says which to ask for
    over            the round is over for this holder; ``next_round`` says which to ask for
    ended           the run is over (``why``: finished | budget | too_few | stopped, ``after_round``):
                    the holder stops asking (protocols/transport.md §5.4)
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping

from securefed.transport.frames import (ACK_ALREADY_REPLIED, ACK_TOO_LATE, Ack, FetchRequest, FrameError, Header, Kind,
                                        decode, encode, iter_stream_frames, sha256_parts)
from securefed.transport.ratelog import HolderLog
from securefed.transport.stream import BytesSink, FrameReader, ReadStopped, StreamReceiver, expect_header

__all__ = ["StageBoard", "HEADER_TIMEOUT_S"]

# A reply stream's header must arrive this soon after the stream opens (transport.md §6.1): a holder sends it at
# once; a client that opens Submit streams and sends nothing would otherwise hold each call until it leaves
HEADER_TIMEOUT_S = 30.0

log = logging.getLogger("securefed.transport.board")


def _wait(cond: threading.Condition, pred, timeout: float) -> bool:
    return cond.wait_for(pred, timeout=max(0.0, timeout))


class _TooLate(Exception):
    """The stage a reply is for ended (its deadline) before the reply arrived or completed (§6.1)."""


class StageBoard:
    """Thread-safe state shared by the RPC handlers and the coordinator's driver thread."""

    def __init__(self, run_id: bytes, *, chunk_size: int) -> None:
        self.run_id, self.chunk_size = run_id, chunk_size
        self.cond = threading.Condition()
        self.round = 0                    # the round in progress (0: none yet)
        self.over = True                  # the current round is over (fetches get "over")
        self.cohort: frozenset[int] = frozenset()
        self.outbox: dict[tuple[int, int], bytes] = {}     # (holder, stage) -> message
        self.stage = -1                   # the stage accepting replies (-1: none)
        self.expect: set[int] = set()
        self.done: set[int] = set()       # submitted (committed) this stage
        self.committed: set[tuple[int, int]] = set()   # (stage, holder) replies committed this round
        # (round, stage) -> the holders it expected and did not get a reply from, for the stages closed in this round
        # and the one before: a reply from one of them now is answered ACK_TOO_LATE (§6.1), not a generic refusal
        self.closed: dict[tuple[int, int], frozenset[int]] = {}
        self.failed: set[int] = set()     # expected holders whose stream failed this stage
        # holders of the round in progress that asked for a later round: they left it (a restarted holder never
        # re-enters a round it accepted, federation.md H7) and are dropped from its stages at once (§6.1)
        self.left: set[int] = set()
        self.streaming: dict[int, FrameReader] = {}   # holder -> the reader of its reply stream open now
        self.replies: dict[int, bytes] = {}
        self._sink: Callable[[int], object] | None = None
        self._max_reply = 0
        self.waiting: dict[int, tuple[int, float]] = {}    # holder -> (round it asked for, when)
        self.polling: dict[int, int] = {}   # holder -> fetches of it open now: alive whatever its last ask's age (§5.3)
        self.bytes_up = self.bytes_down = 0
        self.opened = False               # a round was opened by this process
        self._digest_cache: tuple[bytes, int, bytes] | None = None
        self._digest_lock = threading.Lock()   # holders fetch θ at once: one of them hashes it, the others wait
        self.ended: dict | None = None    # the run is over: what every fetch answers from now on (§5.4)
        self.told: set[int] = set()       # holders the end was sent to
        # what one holder's calls make this process log: at most ratelog.PER_MINUTE lines a minute per holder (§2)
        self.say = HolderLog(log).say

    # ------------------------------------------------------------------ RPC side
    def fetch(self, hid: int, request: bytes, context):
        try:
            req = decode(request)
            if not isinstance(req, FetchRequest) or req.run_id != self.run_id:
                raise FrameError("fetch request for another run or malformed")
        except FrameError as e:
            self.say(hid, logging.WARNING, "holder %d: bad fetch request: %s", hid, e)
            yield from self._frames(0, 0, Kind.WAIT, json.dumps({"reason": "bad_request"}).encode())
            return
        r, s = req.round, req.stage
        deadline = time.monotonic() + req.wait_ms / 1000
        cancelled = threading.Event()

        def on_end() -> None:        # grpc calls this when the call ends, a client cancel or disconnect included
            cancelled.set()
            with self.cond:
                self.cond.notify_all()
        if context is not None and not context.add_callback(on_end):
            return                   # the call has already ended (None: called in-process, no RPC)
        with self.cond:
            self.waiting[hid] = (r, time.monotonic())
            self.polling[hid] = self.polling.get(hid, 0) + 1
            if r > self.round and not self.over and hid in self.cohort and hid not in self.left:
                self._leave(hid, r)
            self.cond.notify_all()
        try:
            yield from self._answer_fetch(hid, r, s, deadline, cancelled)
        finally:
            with self.cond:
                self.polling[hid] -= 1
                if not self.polling[hid]:
                    del self.polling[hid]
                if not cancelled.is_set():   # answered: the holder was there until now; gone: its last ask counts
                    self.waiting[hid] = (self.waiting[hid][0], time.monotonic())
                self.cond.notify_all()

    def _answer_fetch(self, hid: int, r: int, s: int, deadline: float, cancelled: threading.Event):
        """fetch's long poll: the round's message for ``hid`` once there is one, else WAIT with the reason."""
        with self.cond:

            def item():
                if self.round != r:
                    return None
                found = [st for (h, st) in self.outbox if h == hid and st >= s]
                return (min(found), self.outbox[(hid, min(found))]) if found else None

            def ready():
                return (self.ended is not None or self.round > r or item() is not None or
                        (self.round == r and (self.over or hid not in self.cohort)) or cancelled.is_set())
            _wait(self.cond, ready, deadline - time.monotonic())
            if cancelled.is_set():   # the holder went away: free its call slot now, not at wait_ms (§2)
                return
            ending = self.ended is not None
            got = None if ending else item()
            if ending:
                stage, kind, payload = s, Kind.WAIT, json.dumps(self.ended).encode()
            elif got is not None:
                stage, kind, payload = got[0], Kind.STAGE, got[1]
            else:
                if self.round < r:
                    why, nxt = "not_open", r
                elif self.round == r:
                    why, nxt = (("not_in_cohort", r + 1) if hid not in self.cohort else
                                ("not_yet", r) if not self.over else ("over", r + 1))
                else:   # the holder is behind: the round in progress if it is in it, else the next one
                    inside = not self.over and hid in self.cohort
                    why, nxt = "over", self.round if inside else self.round + 1
                stage, kind, payload = s, Kind.WAIT, json.dumps({"reason": why, "next_round": nxt}).encode()
        n = 0
        for f in self._frames(r, stage, kind, payload):
            n += len(f)
            yield f
        with self.cond:
            self.bytes_down += n
            if ending:
                self.told.add(hid)
                self.cond.notify_all()

    def _leave(self, hid: int, asked: int) -> None:
        """(Under the lock.) Holder ``hid`` of the round in progress asks for round ``asked`` > it: it will never reply
        to this round (a holder restarted after accepting it resumes at the next one, federation.md H7), so it is
        dropped from this round's stages now — as if each stage's deadline had passed for it — rather than left to
        hold the stage open until that deadline (transport.md §6.1; the train deadline defaults to 600 s)."""
        self.left.add(hid)
        dropped = self.stage >= 0 and hid in self.expect and hid not in self.done and hid not in self.streaming
        if dropped:
            self.failed.add(hid)
        log.warning("holder %d asks for round %d while round %d is in progress: it has left round %d (restarted after "
                    "accepting it: a holder never re-enters a round it accepted)%s", hid, asked, self.round, self.round,
                    f"; dropped from stage {self.stage} now, not at its deadline" if dropped else
                    "; dropped from its remaining stages")

    def _frames(self, r: int, s: int, kind: Kind, payload: bytes):
        if len(payload) > (1 << 20):     # one θ is sent to every holder: hash it once per round
            with self._digest_lock:       # (unlocked, holders fetching together each hashed it: 3x at 125m x 3)
                cached = self._digest_cache
                if cached is not None and cached[0] is payload:
                    total, digest = cached[1], cached[2]
                else:
                    total, digest = sha256_parts([payload])
                    self._digest_cache = (payload, total, digest)   # holds a reference: identity stays sound
        else:                             # hashed as it streams (the trailer, transport.md §4.1)
            total, digest = len(payload), None
        yield from iter_stream_frames(self.run_id, r, s, kind, [payload], total_len=total, digest=digest,
                                      chunk_size=self.chunk_size)

    def submit(self, hid: int, frames, context) -> bytes:
        """One reply stream: ACK 0 once committed, 2 already replied (§6.3), 3 too late — its stage had ended when it
        arrived, or ended while it was still open (§6.1) — else 1 (refused, the real reason logged)."""
        rx, key = None, None
        reader = FrameReader(iter(frames)).start()
        try:
            try:   # the header: which round and stage this reply is for; one that never comes ends the call (§6.1)
                first = decode(reader.take(HEADER_TIMEOUT_S))
            except TimeoutError:
                raise FrameError(f"no header within {HEADER_TIMEOUT_S:g} s of opening the stream") from None
            with self.cond:
                r, s, sink_for, cap = self.round, self.stage, self._sink, self._max_reply
                if isinstance(first, Header) and first.run_id == self.run_id and first.kind == Kind.REPLY \
                        and first.round == r and (first.stage, hid) in self.committed:
                    # §6.3: said as such, whether or not the stage is still open — a client that never sent this
                    # reply learns that another client holds its identity
                    self.say(hid, logging.WARNING, "holder %d: refused a stream: a reply of this holder to round %d stage "
                             "%d was already committed", hid, r, first.stage)
                    return encode(Ack(ACK_ALREADY_REPLIED, "already replied"))
                if isinstance(first, Header) and first.run_id == self.run_id and first.kind == Kind.REPLY \
                        and hid in self.closed.get((first.round, first.stage), ()):
                    raise _TooLate(f"its reply to round {first.round} stage {first.stage} arrived after that stage "
                                   "had ended")
                if s < 0 or hid not in self.expect:
                    raise FrameError(f"holder is not expected to reply in round {r} now")
                if hid in self.failed or hid in self.done or hid in self.streaming:   # (a done holder's other header)
                    raise FrameError("holder already replied, failed or is streaming this stage")
                # one stream per holder at a time (no holder holds several buffers); its stage's close stops it
                self.streaming[hid] = reader
                key = (r, s)
            head = expect_header(first, run_id=self.run_id, round_index=r, stage=s, kinds=(Kind.REPLY,), max_len=cap)
            sink = sink_for(hid) if sink_for is not None else BytesSink(cap)
            rx = StreamReceiver(head, sink)
            n = 0
            try:
                for raw in reader:
                    n += len(raw)
                    rx.feed(decode(raw))
            except ReadStopped:   # §6.1: the stage closed (its deadline) while this stream was open, even stalled:
                raise _TooLate(f"the stage (round {r} stage {s}) ended before its reply stream completed") from None
            rx.check()   # an incomplete stream is refused here, and its fold undone (finally), outside the lock
            with self.cond:
                if (self.round, self.stage) != key:
                    raise _TooLate(f"the stage (round {r} stage {s}) ended before its reply stream completed")
                # committed under the lock that closes stages: a reply counts (ACK 0) if and only if its stage was
                # still open when it completed — a masked input's fold commits into the sum here, so a holder
                # answered "too late" is never in the sum (§6.1). (A plain update's BytesSink copies itself here.)
                rx.finish()
                if sink_for is None:
                    self.replies[hid] = sink.value
                self.done.add(hid)
                self.committed.add((s, hid))
                self.bytes_up += n
                self.cond.notify_all()
            return encode(Ack(0))
        except _TooLate as e:   # said as such: the holder learns its reply counts for nothing, not a bare "refused"
            self.say(hid, logging.WARNING, "holder %d: answered too late: %s", hid, e)
            return encode(Ack(ACK_TOO_LATE, "too late: the stage had ended"))
        except StopIteration:
            self.say(hid, logging.WARNING, "holder %d: empty submit", hid)
        except Exception as e:
            if key is not None and self._ended(key):
                # §6.1: its stage closed while this stream was open: whatever failed after that — a chunk taken
                # before the close written into a fold the driver's seal has since undone, a fold opened after the
                # seal — the reply counts for nothing because it was late, and is answered so (3), not refused (1)
                self.say(hid, logging.WARNING, "holder %d: answered too late: the stage (round %d stage %d) ended while its "
                         "reply stream was open (then: %s)", hid, key[0], key[1], e)
                return encode(Ack(ACK_TOO_LATE, "too late: the stage had ended"))
            if isinstance(e, (FrameError, ValueError)):
                self.say(hid, logging.WARNING, "holder %d: refused a stream: %s", hid, e)
            else:   # connection lost mid-stream (grpc raises from the request iterator)
                self.say(hid, logging.WARNING, "holder %d: stream broke off: %s", hid, type(e).__name__)
        finally:
            if rx is not None:
                rx.abort()
            if key is not None:
                with self.cond:
                    self.streaming.pop(hid)
            reader.stop()   # its thread ends now, not left holding a frame nobody takes
        if key is not None:      # an expected holder's stream failed: it is dropped for this stage (S6),
            with self.cond:      # so the stage need not wait for its deadline on its account
                if (self.round, self.stage) == key:
                    self.failed.add(hid)
                    self.cond.notify_all()
        return encode(Ack(1, "refused"))

    def _ended(self, key: tuple[int, int]) -> bool:
        """The stage ``key`` (round, stage) no longer accepts replies: it was closed (§6.1)."""
        with self.cond:
            return (self.round, self.stage) != key

    # ------------------------------------------------------------------ driver side
    def wait_for_holders(self, r: int, *, want: int, timeout: float, fresh: float = 45.0,
                         on_change: Callable[[list[int]], None] | None = None) -> list[int]:
        """Holders asking for round ``r`` or later. The first round of this process waits until ``want``
        holders ask, or until no holder has newly asked for ``timeout`` seconds (protocols/transport.md
        §5.3: holders started together on shared cores come up one after another, none stuck); later
        rounds until every holder alive (it asked for anything in the last ``fresh`` seconds) asks, up to
        ``timeout`` — a holder that died is not waited for, a slow one is. ``on_change`` (progress) gets
        the holders asking so far, at the start and each time the set changes, called without the board's
        lock held (it may write files; the RPC handlers must not wait on it)."""
        end = time.monotonic() + timeout
        first = not self.opened

        def asking():
            alive = self._alive(fresh)
            return sorted(h for h, (rr, _) in self.waiting.items() if rr >= r and h in alive)

        def ready():
            ask = asking()
            if len(ask) >= want:
                return True
            return not first and bool(ask) and self._alive(fresh) <= set(ask)
        with self.cond:
            if self.round < r - 1:          # fresh start or resume: earlier rounds count as over
                self.round, self.over = r - 1, True
                self.cond.notify_all()
            seen = set(asking())
            now = sorted(seen)
        shown = None
        while True:
            if on_change is not None and now != shown:
                shown = now
                on_change(now)              # outside the lock: it may write files (status.json)
            with self.cond:
                woke = self._wait_fresh(lambda: ready() or not set(asking()) <= seen, end, fresh)
                now, over = asking(), not woke or ready()
                if not over:
                    seen |= set(now)                # a holder asked for the first time in this wait:
                    if first:                       # in the first round the wait restarts (§5.3)
                        end = time.monotonic() + timeout
            if over:
                break
        if on_change is not None and now != shown:
            on_change(now)
        with self.cond:
            self.bytes_up = self.bytes_down = 0
            return asking()

    def _alive(self, fresh: float) -> set[int]:
        """(Under the lock.) Holders alive (§5.3): a fetch of theirs is open now, or they asked for anything in the
        last ``fresh`` seconds. A long poll outlasting ``fresh`` is alive, not stale."""
        now = time.monotonic()
        return {h for h, (_, t) in self.waiting.items() if h in self.polling or now - t < fresh}

    def _wait_fresh(self, pred, end: float, fresh: float) -> bool:
        """(Under the lock.) _wait until ``pred`` or ``end``, waking also when a holder's ``fresh`` window runs out:
        nothing notifies then, and a holder that died must stop being waited for when it does (§5.3), not at the
        next fetch of another holder."""
        while True:
            now = time.monotonic()
            expiries = [t + fresh for h, (_, t) in self.waiting.items() if h not in self.polling and t + fresh > now]
            until = min([end, *(e + 0.01 for e in expiries)])
            if _wait(self.cond, pred, until - now):
                return True
            if time.monotonic() >= end:
                return False

    def open_round(self, r: int, cohort) -> None:
        with self.cond:
            self._close_stage()   # (a round that opens over an open stage: never, but then that stage ended)
            self.round, self.over, self.cohort, self.opened = r, False, frozenset(cohort), True
            self.outbox, self.committed, self.left = {}, set(), set()
            self.closed = {k: v for k, v in self.closed.items() if k[0] >= r - 1}   # this round's and the last
            self.cond.notify_all()

    def publish(self, stage: int, outbox: Mapping[int, bytes], *, reply: bool,
                sink: Callable[[int], object] | None = None, max_reply: int = 0) -> None:
        with self.cond:
            for h, payload in outbox.items():
                self.outbox[(h, stage)] = payload
            if reply:
                self._close_stage()   # (the driver closes each stage with wait_replies first; if not, it ends here)
                # a holder that left this round (asked for a later one) is not waited for (§6.1)
                self.stage, self.expect, self.done, self.failed = stage, set(outbox), set(), set(outbox) & self.left
                self.replies, self._sink, self._max_reply = {}, sink, max_reply
            self.cond.notify_all()

    def wait_replies(self, deadline: float, *,
                     on_progress: Callable[[int], None] | None = None) -> tuple[dict[int, bytes], set[int]]:
        """Wait until every addressed holder replied (or failed) or ``deadline`` seconds pass; then close
        the stage: later submissions are refused (those of holders it waited for in vain: ACK_TOO_LATE, §6.1),
        and messages of this and earlier stages withdrawn.
        ``on_progress`` (progress) gets the number of addressed holders settled (replied or failed) each
        time it grows, called without the board's lock held."""
        end = time.monotonic() + deadline

        def settled() -> int:
            return len(self.expect & (self.done | self.failed))

        def all_in() -> bool:
            return self.expect <= self.done | self.failed
        with self.cond:
            n, finished = settled(), all_in()
        if n and on_progress is not None:   # replies already in when the wait begins (a fast stage): counted, not
            on_progress(n)                  # left at 0/n ("stopped at 0/3" on the console while all 3 replied)
        while not finished:
            with self.cond:
                if not _wait(self.cond, lambda: all_in() or settled() != n, end - time.monotonic()):
                    break
                n, finished = settled(), all_in()
            if on_progress is not None:
                on_progress(n)                      # outside the lock: it may write files (status.json)
        with self.cond:
            missing = sorted(self.expect - self.done - self.failed)
            if missing:
                log.info("round %d stage %d: no reply from %s (treated as dropped)", self.round, self.stage, missing)
            replies, done, s = dict(self.replies), set(self.done), self.stage
            self.outbox = {k: v for k, v in self.outbox.items() if k[1] > s}
            self._close_stage()      # streams still open (even stalled ones) are answered too late now (§6.1)
            self._sink = None
            self.cond.notify_all()
        return replies, done

    def end_round(self, r: int) -> None:
        with self.cond:
            if self.round == r:
                self._close_stage()
                self.over, self.outbox = True, {}
                self.cond.notify_all()

    def end_run(self, why: str, after_round: int) -> None:
        """§5.4: from now on every fetch — those long-polling now included — answers WAIT ``ended``."""
        with self.cond:
            self.ended = {"reason": "ended", "why": why, "after_round": after_round}
            self._close_stage()
            self.over, self.outbox = True, {}
            self.cond.notify_all()

    def _close_stage(self) -> None:
        """(Under the lock.) The stage accepting replies ends: no more replies to it; the holders it still expected
        are remembered, so that a reply of theirs arriving now is answered ACK_TOO_LATE (§6.1). A reply stream still
        open is stopped: its handler undoes its buffer or fold and answers ACK_TOO_LATE at once, which ends the call
        — nothing of it is kept past the deadline, and its holder is told why, not cancelled (§6.1)."""
        if self.stage >= 0:
            self.closed[(self.round, self.stage)] = frozenset(self.expect - self.done)
        for reader in self.streaming.values():
            reader.stop()
        self.stage, self.expect = -1, set()

    def wait_told(self, *, fresh: float, timeout: float, also: frozenset[int] = frozenset()) -> list[int]:
        """Wait (≤ ``timeout`` s) until every holder that asked for anything in the last ``fresh`` s, and each of
        ``also`` (holders expected to come back: a resumed run that ended without a round, transport.md §5.4),
        was told the run ended; the holders still untold."""
        with self.cond:
            alive = self._alive(fresh) | set(also)
            _wait(self.cond, lambda: alive <= self.told, timeout)
            return sorted(alive - self.told)

    def status(self) -> dict:
        with self.cond:
            return {"round": self.round, "over": self.over, "stage": self.stage, "cohort": sorted(self.cohort),
                    "expect": sorted(self.expect), "done": sorted(self.done),
                    # once the run has ended nobody waits for a round (a walkthrough read the ended run's status with
                    # every holder listed as waiting)
                    "waiting": [] if self.ended else sorted(self.waiting), "ended": self.ended}
