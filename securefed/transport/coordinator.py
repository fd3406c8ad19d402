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
from dataclasses import dataclass, field

import numpy as np

from securefed.secagg import SecAggServer, ServerStage
from securefed.secagg.messages import MaskedInput
from securefed.transport.accumulate import RingAccumulator
from securefed.transport.frames import (FetchRequest, FrameError, Kind, decode, encode, iter_stream_frames, Ack,
                                        sha256_parts)
from securefed.transport.stream import BytesSink, StreamReceiver, expect_header

__all__ = ["Stage", "Deadlines", "RoundBoard", "RoundOutcome", "SECAGG_STAGES"]

log = logging.getLogger("securefed.transport.coordinator")


class Stage:
    ROUND, MODEL, ADVERTISE, SHARES, MASKED, CONSISTENCY, UNMASK = range(7)


SECAGG_STAGES = (Stage.ADVERTISE, Stage.SHARES, Stage.MASKED, Stage.CONSISTENCY, Stage.UNMASK)
MAX_CONTROL = 16 << 20           # largest non-vector secagg message accepted (ShareKeys of a big cohort)
MAX_RESULT = 64 << 10


@dataclass(frozen=True)
class Deadlines:
    """Seconds per stage (protocols/transport.md §6.1); training happens inside ``train``."""

    join: float = 120.0          # wait for holders before a round opens
    train: float = 600.0         # round open -> AdvertiseKeys (download + K local steps + encode)
    control: float = 60.0        # each small secagg stage
    upload: float = 600.0        # the masked-input stream

    def for_stage(self, stage: int) -> float:
        return {Stage.ADVERTISE: self.train, Stage.MASKED: self.upload}.get(stage, self.control)


@dataclass
class RoundOutcome:
    ring_total: np.ndarray | None
    survivors: tuple[int, ...]
    cohort: tuple[int, ...]
    results: dict[int, dict]
    bytes_up: int
    bytes_down: int
    aborted: str | None = None
    stage_seconds: dict = field(default_factory=dict)


def _wait(cond: threading.Condition, pred, timeout: float) -> bool:
    return cond.wait_for(pred, timeout=max(0.0, timeout))


def accept_streamed_masked(sa: SecAggServer, sender: int) -> None:
    """Register an already-folded MaskedInput with the secagg server (S1, S4 checked by the stream).

    SecAggServer has no public entry for inputs folded chunk-wise into ``sa.total``; until it does
    (requested: ``SecAggServer.accept_streamed_masked(sender)``), this records the acceptance the way
    ``receive`` would, with an empty vector (the words are already in ``sa.total``).
    """
    public = getattr(sa, "accept_streamed_masked", None)
    if public is not None:
        public(sender)
        return
    if sa.stage is not ServerStage.COLLECT_MASKED or sender not in sa._expected() or sender in sa._got:
        raise FrameError("masked input not expected from this holder")
    sa._got[sender] = MaskedInput(sender, sa.ring.bits, np.empty(0, dtype=sa.ring.dtype))


def _round_report(data: bytes) -> dict:
    """A holder's RESULT (§5.2): only known keys with sane values reach metrics; else ValueError."""
    obj = json.loads(data.decode("utf-8"))
    if not isinstance(obj, dict):
        raise ValueError("result must be a JSON object")
    out = {}
    tokens, loss = obj.get("tokens", 0), obj.get("loss")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens < 2**53:
        raise ValueError("result.tokens must be a non-negative int")
    out["tokens"] = tokens
    if loss is not None:
        if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not np.isfinite(loss):
            raise ValueError("result.loss must be a finite number or null")
        out["loss"] = float(loss)
    out["clipped"] = obj.get("clipped") is True
    norm = obj.get("norm", 0.0)
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not (np.isfinite(norm) and norm >= 0):
        raise ValueError("result.norm must be a finite number >= 0")
    out["norm"] = float(norm)
    return out


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
                self.results[hid] = _round_report(sink.value)
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
