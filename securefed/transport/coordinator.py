"""The coordinator's round board: stages, mailboxes, deadlines (protocols/transport.md §5, §6).

One round, as the holders see it (stage numbers are the ``stage`` field of frames):

    0 ROUND        fetch manifest (cohort, model hash, deadlines)      ┐ published when the round opens
    1 MODEL        fetch θ_r (float32, streamed)                       │
    2 ADVERTISE    fetch RoundStart      → train → submit RESULT + AdvertiseKeys
    3 SHARES       fetch KeyRoster       → submit ShareKeys
    4 MASKED       fetch ForwardedShares → submit MaskedInput (streamed, folded on arrival)
    5 CONSISTENCY  fetch SurvivorList    → submit ConsistencySignature
    6 UNMASK       fetch UnmaskRequest   → submit UnmaskShares

Secure-aggregation messages are carried unchanged (protocols/secagg.md §7) between ``SecAggClient``
and ``SecAggServer``. A stage closes when every expected holder has submitted or its deadline passes;
whoever has not submitted by then is, for secure aggregation, a holder that dropped (§6).
"""

from __future__ import annotations

import json
import logging
import threading
import time

from securefed.secagg import SecAggServer
from securefed.transport.accumulate import RingAccumulator
from securefed.transport.frames import (Ack, FetchRequest, FrameError, Kind, decode, encode, iter_stream_frames,
                                        sha256_parts)
from securefed.transport.stages import (MAX_CONTROL, MAX_RESULT, SECAGG_STAGES, Deadlines, RoundOutcome, Stage,
                                        accept_streamed_masked, round_report)
from securefed.transport.stream import BytesSink, StreamReceiver, expect_header

__all__ = ["Stage", "Deadlines", "RoundBoard", "RoundOutcome", "SECAGG_STAGES"]

log = logging.getLogger("securefed.transport.coordinator")


def _wait(cond: threading.Condition, pred, timeout: float) -> bool:
    return cond.wait_for(pred, timeout=max(0.0, timeout))


class RoundBoard:
    """Thread-safe state shared by the RPC handlers and the round driver."""

    def __init__(self, run_id: bytes, spool, *, chunk_size: int) -> None:
        self.run_id, self.spool, self.chunk_size = run_id, spool, chunk_size
        self.cond = threading.Condition()
        self.round, self.stage = -1, -1
        self.cohort: frozenset[int] = frozenset()
        self.outbox: dict[tuple[int, int], tuple[Kind, bytes]] = {}
        self.expect: set[int] = set()
        self.submitted: set[int] = set()
        self.failed: set[int] = set()              # expected holders whose stream failed this stage
        self.results: dict[int, dict] = {}
        self.waiting: dict[int, float] = {}        # holder -> last time it asked for the next round
        self.sa: SecAggServer | None = None
        self.acc: RingAccumulator | None = None
        self.bytes_up = self.bytes_down = 0
        self.on_stage = None                       # callback(round, stage, expected holders): status file
        self._digest_cache: tuple[bytes, int, bytes] | None = None

    # ------------------------------------------------------------------ RPC side
    def fetch(self, hid: int, request: bytes, context):
        try:
            req = decode(request)
            if not isinstance(req, FetchRequest) or req.run_id != self.run_id:
                raise FrameError("fetch request for another run or malformed")
        except FrameError as e:
            log.warning("holder %d: bad fetch request: %s", hid, e)
            yield from self._frames(0, 0, Kind.WAIT, json.dumps({"error": "bad request"}).encode())
            return
        r, s = req.round, req.stage
        deadline = time.monotonic() + req.wait_ms / 1000
        with self.cond:
            if s == Stage.ROUND:
                self.waiting[hid] = time.monotonic()
                self.cond.notify_all()

            def ready():
                return self.round > r or (self.round == r and ((hid, s) in self.outbox or self.stage >= s
                                                               or hid not in self.cohort))
            _wait(self.cond, ready, deadline - time.monotonic())
            item = self.outbox.get((hid, s)) if self.round == r else None
            if item is None:
                if self.round < r:
                    why, nxt = "not_open", r
                elif self.round == r and hid in self.cohort and self.stage < s:
                    why, nxt = "not_yet", r
                elif self.round == r and hid not in self.cohort:
                    why, nxt = "not_in_cohort", r + 1
                else:
                    why, nxt = "dropped_or_over", max(self.round, r + 1) if self.round > r else r + 1
                item = (Kind.WAIT, json.dumps({"reason": why, "next_round": nxt}).encode())
        kind, payload = item
        n = 0
        for f in self._frames(r, s, kind, payload):
            n += len(f)
            yield f
        with self.cond:
            self.bytes_down += n

    def _frames(self, r: int, s: int, kind: Kind, payload: bytes):
        cached = self._digest_cache      # the model is one shared bytes object: hash it once per round
        if cached is not None and cached[0] is payload:
            total, digest = cached[1], cached[2]
        else:
            total, digest = sha256_parts([payload])
            if len(payload) > (1 << 20):
                self._digest_cache = (payload, total, digest)   # holds a reference: identity stays sound
        yield from iter_stream_frames(self.run_id, r, s, kind, [payload], total_len=total, digest=digest,
                                      chunk_size=self.chunk_size)

    def submit(self, hid: int, frames, context) -> bytes:
        it = iter(frames)
        rx, stage_key = None, None
        try:
            with self.cond:
                r, s = self.round, self.stage
                kinds = {Stage.ADVERTISE: (Kind.SECAGG, Kind.RESULT), Stage.MASKED: (Kind.MASKED,)}.get(s, (Kind.SECAGG,))
                max_len = MAX_CONTROL
                if s == Stage.MASKED and self.acc is not None:
                    max_len = 19 + self.acc.length * self.acc.dtype.itemsize
                if hid not in self.expect:
                    raise FrameError(f"holder is not expected in round {r} stage {s}")
                if hid in self.failed:
                    raise FrameError("holder already failed this stage")
            head = expect_header(decode(next(it)), run_id=self.run_id, round_index=r, stage=s, kinds=kinds,
                                 max_len=max_len if s == Stage.MASKED else max(MAX_CONTROL, MAX_RESULT))
            stage_key = (r, s)
            if head.kind == Kind.MASKED:
                sink = self.acc.open(hid, on_commit=lambda h: accept_streamed_masked(self.sa, h))
            else:
                sink = BytesSink(MAX_RESULT if head.kind == Kind.RESULT else MAX_CONTROL)
            rx = StreamReceiver(head, sink)
            n = 0
            for raw in it:
                n += len(raw)
                rx.feed(decode(raw))
            rx.finish()
            self._accept(hid, r, s, head.kind, sink)
            with self.cond:
                self.bytes_up += n
            return encode(Ack(0))
        except StopIteration:
            log.warning("holder %d: empty submit", hid)
        except (FrameError, ValueError) as e:
            log.warning("holder %d: refused a stream: %s", hid, e)
        except Exception as e:  # connection lost mid-stream (grpc raises from the request iterator)
            log.warning("holder %d: stream broke off: %s", hid, type(e).__name__)
        finally:
            if rx is not None:
                rx.abort()
        if stage_key is not None:        # an expected holder's stream failed: it is dropped for this stage (S6),
            with self.cond:              # so the stage need not wait for its deadline on its account
                if (self.round, self.stage) == stage_key:
                    self.failed.add(hid)
                    self.cond.notify_all()
        return encode(Ack(1, "refused"))

    def _accept(self, hid: int, r: int, s: int, kind: Kind, sink) -> None:
        with self.cond:
            if self.round != r or self.stage != s:
                raise FrameError("stage closed before the stream completed")
            if kind == Kind.RESULT:
                self.results[hid] = round_report(sink.value)
                return
            if kind == Kind.SECAGG:
                self.sa.receive(hid, sink.value)
            self.submitted.add(hid)
            self.cond.notify_all()

    # ------------------------------------------------------------------ driver side
    def wait_for_holders(self, r: int, *, want: int, timeout: float, fresh: float = 45.0) -> list[int]:
        """Holders that asked for round ``r`` recently; waits until ``want`` of them or the timeout."""
        end = time.monotonic() + timeout

        def ready():
            now = time.monotonic()
            return sorted(h for h, t in self.waiting.items() if now - t < fresh)
        with self.cond:
            if self.round < r - 1:                     # fresh start or resume: round r-1 counts as over
                self.round, self.stage = r - 1, Stage.UNMASK + 1
            _wait(self.cond, lambda: len(ready()) >= want, end - time.monotonic())
            return ready()

    def run_round(self, r: int, cohort: list[int], manifest: dict, model_bytes: bytes, sa: SecAggServer,
                  deadlines: Deadlines) -> RoundOutcome:
        t0 = time.perf_counter()
        times: dict[str, float] = {}
        with self.cond:
            self.round, self.cohort, self.sa = r, frozenset(cohort), sa
            self.acc = RingAccumulator.over(sa.total, sa.ring.bits, self.spool)
            self.results, self.outbox = {}, {}
            man = json.dumps(manifest).encode()
            start = sa.round_start()
            for h in cohort:
                self.outbox[(h, Stage.ROUND)] = (Kind.ROUND, man)
                self.outbox[(h, Stage.MODEL)] = (Kind.MODEL, model_bytes)
                self.outbox[(h, Stage.ADVERTISE)] = (Kind.SECAGG, start)
            self.bytes_up = self.bytes_down = 0
            self._open_stage(Stage.ADVERTISE, set(cohort))
            self.cond.notify_all()
        aborted = None
        for s in SECAGG_STAGES:
            ts = time.perf_counter()
            with self.cond:
                _wait(self.cond, lambda: self.expect <= self.submitted | self.failed, deadlines.for_stage(s))
                missing = sorted(self.expect - self.submitted)
                self.stage = s + 0.5       # closing: late submissions are refused from here on
            if s == Stage.MASKED:
                self.acc.seal()            # undo every half-received masked input now
            if missing:
                log.info("round %d stage %d: no reply from %s (treated as dropped)", r, s, missing)
            try:
                with self.cond:
                    out = sa.close_stage()
                    self.outbox = {k: v for k, v in self.outbox.items() if k[1] > s}
                    for h, msg in out.items():
                        self.outbox[(h, s + 1)] = (Kind.SECAGG, msg)
                    if s != Stage.UNMASK:
                        self._open_stage(s + 1, set(out))
                    self.cond.notify_all()
            except Exception as e:  # SecAggAborted (too few survivors, failed checks)
                aborted = f"{type(e).__name__}: {e}"
                log.warning("round %d aborted at stage %d: %s", r, s, aborted)
                break
            finally:
                times[str(s)] = time.perf_counter() - ts
        with self.cond:
            self.stage = Stage.UNMASK + 1
            self.outbox = {}
            self.cond.notify_all()
            total = None if aborted else sa.result
            survivors = () if aborted else tuple(sorted(sa.survivors))
            times["total"] = time.perf_counter() - t0
            return RoundOutcome(total, survivors, tuple(sorted(cohort)), dict(self.results), self.bytes_up,
                                self.bytes_down, aborted, times)

    def _open_stage(self, s: int, expect: set[int]) -> None:
        self.stage, self.expect, self.submitted, self.failed = s, set(expect), set(), set()
        if self.on_stage is not None:
            self.on_stage(self.round, s, sorted(expect))

    def status(self) -> dict:
        with self.cond:
            return {"round": self.round, "stage": self.stage, "cohort": sorted(self.cohort),
                    "expect": sorted(self.expect), "submitted": sorted(self.submitted),
                    "waiting": sorted(self.waiting)}
