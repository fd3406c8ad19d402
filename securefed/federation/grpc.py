"""The gRPC channel (deployment across institutions): the coordinator's side (:class:`GrpcChannel`) and
the holder's (:func:`run_holder`), over securefed.transport (frames, streams, mutual TLS, mailboxes).

Coordinator: a gRPC server with mutual TLS whose Join answers each authenticated holder with its
Welcome, and whose Fetch/Submit serve the stage mailboxes (transport.board.StageBoard). Holder: join,
check the Welcome against its own floors, then for each round long-poll its next stage message, hand
it to the same ``Holder.handle`` the in-process channel calls, and stream the reply back.

Exit codes of a holder: ``EXIT`` below, as protocols/transport.md §10 lists them.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import time
from collections.abc import Callable, Collection, Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from securefed import jsonio
from securefed.federation.channel import Channel, SinkFactory
from securefed.federation.messages import MAX_MESSAGE, Hello, MessageError, decode_as, encode
from securefed.federation.stages import RELEASE_STAGES, Stage, stage_label
from securefed.runtime.rundir import atomic_write_text
from securefed.secagg import IdentityInUse, Roster
from securefed.transport.board import StageBoard
from securefed.transport.frames import ACK_ALREADY_REPLIED, ACK_TOO_LATE, DEFAULT_CHUNK, FrameError, Kind
from securefed.transport.pki import Layout
from securefed.transport.service import Handlers, make_server, server_workers
from securefed.transport.stream import BufferSink

__all__ = ["GrpcChannel", "run_holder", "EXIT"]

log = logging.getLogger("securefed.channel.grpc")

# protocols/transport.md §10
EXIT = {"ok": 0, "error": 1, "usage": 2, "auth": 3, "state": 4, "too_few": 5, "unreachable": 6, "policy": 7,
        "stopped": 8, "identity": 9}
JOIN_WAIT_S = 60.0   # one Join attempt waits this long for the coordinator to answer (gRPC wait_for_ready)
# a holder told the run ended (§5.4): why -> (its exit code, what it logs)
_ENDED = {"finished": (EXIT["ok"], "all rounds done"), "budget": (EXIT["ok"], "the run's privacy budget is spent"),
          "too_few": (EXIT["too_few"], "too few holders to continue"),
          "stopped": (EXIT["stopped"], "the coordinator stopped before its last round; start this client again if "
                                       "it resumes")}


def _ids(ids: list[int], shown: int = 12) -> str:
    return ", ".join(map(str, ids[:shown])) + (f", … ({len(ids)})" if len(ids) > shown else "")


def _say_refusals(holder) -> bool:
    """The run's rounds this holder refused, from its own signed ledger (restarts included): a holder whose cap
    was reached sat out the rest of the run and still ended with exit 0 and only "all rounds done" (a review).
    True when it refused rounds and took part in none: the run was below its floors or budget throughout, and
    the client exits 7 (transport.md §10), as when the Welcome is below them — nothing of its data was sent."""
    budget = getattr(holder, "budget", None)
    refused = budget.refused_rounds() if budget is not None else {}
    if not refused:
        return False
    took = sorted(budget.released_rounds())
    last = refused[max(refused)]
    if not took:
        log.error("holder %d: it refused every round it was offered (%d: round %s) and took part in none; the last "
                  "refusal: %s", holder.id, len(refused), _ids(sorted(refused)), last)
        return True
    log.warning("holder %d: it took part in %d of the run's rounds (round %s) and refused %d (round %s); the last "
                "refusal: %s", holder.id, len(took), _ids(took), len(refused), _ids(sorted(refused)), last)
    return False


class GrpcChannel(Channel):
    def __init__(self, *, pki: str | Path, roster: Roster, host: str = "127.0.0.1", port: int = 0,
                 chunk_size: int = DEFAULT_CHUNK, status_path: Path | None = None, alive_s: float = 45.0,
                 progress=None) -> None:
        self.pki, self.roster, self.host, self.want_port = Layout(pki), roster, host, port
        self.chunk_size, self.status_path, self.alive_s = chunk_size, status_path, alive_s
        self.progress = progress    # runtime.progress.Progress: what the coordinator waits for, and for whom
        self.board: StageBoard | None = None
        self.server = None
        self.port = None

    # bytes carried this round
    bytes_up = property(lambda self: self.board.bytes_up if self.board else 0)
    bytes_down = property(lambda self: self.board.bytes_down if self.board else 0)

    def open(self, *, welcome_for: Callable[[int], bytes], run_id: bytes) -> None:
        self.board = StageBoard(run_id, chunk_size=self.chunk_size)

        def join(hid: int, request: bytes, context) -> bytes:
            try:
                hello = decode_as(request, Hello)
            except MessageError as e:
                self.board.say(hid, logging.WARNING, "holder %d: malformed hello: %s", hid, e)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "malformed hello")
            if hello.holder_id != hid:   # the id comes from the TLS certificate, never from a message
                context.abort(grpc.StatusCode.PERMISSION_DENIED, "not authorized")
            # one line per Join, at most ratelog.PER_MINUTE a minute per holder (transport.md §2)
            self.board.say(hid, logging.INFO, "holder %d joined (%s)", hid, context.peer())
            return welcome_for(hid)

        handlers = Handlers(join=join, fetch=self.board.fetch, submit=self.board.submit, status=self.status)
        n = len(self.roster.keys)
        self.server, self.port = make_server(handlers, host=self.host, port=self.want_port, cert=self.pki.server_cert,
                                             key=self.pki.server_key, ca=self.pki.ca_cert,
                                             roster_ids=frozenset(self.roster.keys), max_workers=server_workers(n))
        self.server.start()
        log.info("listening on %s:%d (mTLS), run %s, %d holders on the roster", self.host, self.port, run_id.hex(), n)
        self._write_status()

    def status(self) -> dict:
        board = self.board.status() if self.board else None
        if board is not None:   # the stage in words beside its number (`server --status` printed only "stage": 3)
            board["stage_name"] = stage_label(board["stage"]) if board.get("stage", -1) >= 0 else None
        return {"port": self.port, "pid": os.getpid(), "board": board, "updated": time.time()}

    def _write_status(self, **extra) -> None:
        if self.status_path is not None:
            # host: `--status` can tell whether the pid it names is this machine's (not sent to holders)
            atomic_write_text(self.status_path, jsonio.dumps(dict(self.status(), host=socket.gethostname(), **extra))
                              + "\n")

    def available(self, round_index: int, *, want: int, timeout: float) -> list[int]:
        """The holders able to take round ``round_index``; while it waits, the console and RUN_DIR/status.json
        (``securefed server --status``) show who is asking, updated as each holder asks."""
        with self._step(f"round {round_index}: waiting for holders", want) as task:
            def seen(asking: list[int]) -> None:
                if task is not None:
                    task.advance(len(asking) - task.done, note="asking: " + (_ids(asking) or "none yet"))
                self._write_status(waiting_for_round=round_index, asking=list(asking))
            return self.board.wait_for_holders(round_index, want=want, timeout=timeout, fresh=self.alive_s,
                                               on_change=seen)

    def _step(self, label: str, total: int):
        """A progress step the heartbeat shows ("federated rounds 0/3 > round 1: waiting for holders 2/4
        (asking: 1, 3): still working (40 s in this step)"); without a progress, nothing."""
        return self.progress.step(label, total=total) if self.progress is not None else nullcontext()

    def _wait_replies(self, round_index: int, stage: int, n: int, deadline: float):
        """The stage's replies; the console and status.json show how many are in as each one arrives."""
        self._write_status()                      # the stage just published: status.json says which, now
        with self._step(f"round {round_index}: {stage_label(stage)}, replies", n) as task:
            def settled(k: int) -> None:
                if task is not None:
                    task.advance(k - task.done)
                self._write_status()
            return self.board.wait_replies(deadline, on_progress=settled)

    def send(self, round_index: int, stage: int, outbox: Mapping[int, bytes]) -> None:
        self._ensure_open(round_index, outbox)
        self.board.publish(stage, outbox, reply=False)

    def _ensure_open(self, r: int, outbox: Mapping[int, bytes]) -> None:
        if self.board.round != r or self.board.over:
            self.board.open_round(r, outbox)      # the first stage of a round addresses its whole cohort
            self._write_status()

    def exchange(self, round_index: int, stage: int, outbox: Mapping[int, bytes], *, deadline: float,
                 max_reply: int) -> dict[int, bytes]:
        self._ensure_open(round_index, outbox)
        self.board.publish(stage, outbox, reply=True, max_reply=max_reply)
        replies, _ = self._wait_replies(round_index, stage, len(outbox), deadline)
        return replies

    def collect(self, round_index: int, stage: int, outbox: Mapping[int, bytes], *, deadline: float,
                sink: SinkFactory, max_reply: int) -> set[int]:
        self._ensure_open(round_index, outbox)
        self.board.publish(stage, outbox, reply=True, sink=sink, max_reply=max_reply)
        _, done = self._wait_replies(round_index, stage, len(outbox), deadline)
        return done

    def end_round(self, round_index: int) -> None:
        self.board.end_round(round_index)
        self._write_status()

    def end_run(self, *, why: str, after_round: int, expect: Collection[int] = (), within: float = 0.0) -> None:
        """protocols/transport.md §5.4. After the last round holders stop asking by themselves; after an
        early end every holder still alive (asked for anything in the last ``alive_s``) is told why
        before the server stops, so none is left retrying a coordinator that is gone. ``expect``: holders
        told though none has asked yet, waited for up to ``within`` s — a coordinator resumed after its last
        round's sum (nothing left to run) ended within a second, while the holders of that round, cut off
        mid-stage, retried for ≈ 20 minutes and exited 6 (a review)."""
        if self.board is None:
            return
        self.board.end_run(why, after_round)
        self._write_status()
        if why != "finished" or expect:
            wait = max(self.alive_s, within) if expect else self.alive_s
            if expect:
                log.info("the run ended (%s) with no round left to run: waiting up to %.0fs for holders %s to ask "
                         "again and be told", why, wait, _ids(sorted(expect)))
            untold = self.board.wait_told(fresh=self.alive_s, timeout=wait, also=frozenset(expect))
            if untold:
                log.warning("the run ended (%s) but holders %s did not ask again within %.0fs: %s", why, untold, wait,
                            "those still running will retry, then exit 6" if expect else "they will retry, then exit 6")

    def close(self) -> None:
        if self.server is not None:
            # wait for the stop: a handler still streaming when the interpreter exits would block its exit for
            # good (gRPC's polling thread can no longer hand it the cancellation)
            if not self.server.stop(grace=2.0).wait(timeout=30.0):
                log.warning("the gRPC server did not stop within 32 s")
            self.server = None


# ---------------------------------------------------------------------------------------- holder side
def run_holder(holder, *, target: str, creds, server_name: str | None = None, max_failures: int = 20,
               patience_s: float = 86400.0, backoff=None) -> int:
    """Take part in a run as ``holder`` (a federation.holder.Holder) until it ends; an exit code. ``patience_s``:
    the longest it waits for the coordinator's next stage message once welcomed (transport.md §6.4)."""
    from securefed.federation.holder import HolderStateError, PolicyRefused
    from securefed.privacy.ledger import LedgerWriteError
    from securefed.runtime.rundir import WriteError
    from securefed.transport.client import FATAL_CODES, Backoff, Refused, TransportClient, classify_connect_error

    backoff = backoff or Backoff()
    failures, tc, at = 0, None, None    # at: (round, next stage) to resume after a dropped connection
    sent = _Sent(patience_s=patience_s)  # what this process submitted and how it was answered, reconnects included
    while True:
        try:
            if tc is None:
                tc = TransportClient(target, creds, server_name=server_name)
            if holder.welcomed is None and failures == 0:
                log.info("holder %d: joining the coordinator at %s (each attempt waits up to %.0f s for it)", holder.id,
                         target, JOIN_WAIT_S)
            # a Join waits for the channel to be ready and would hide why it is not: ask gRPC first (§6.3, §7.1)
            problem = tc.connect_problem()
            if problem is not None and problem.final:
                raise _Untrusted(problem.text)
            first = holder.welcomed is None
            holder.welcome(tc.join(encode(Hello(holder.id)), timeout=JOIN_WAIT_S))
            if first:   # §6.4: patience counts from the welcome, not from the attempts to reach the coordinator
                sent.heard_at = time.monotonic()
            tc.set_run(holder.welcomed.run_id)
            # after a dropped connection: back to the same stage of the same round (its state is in memory)
            r = at[0] if at is not None else max(holder.welcomed.next_round, holder.next_round)
            while r <= holder.welcomed.rounds:
                r, at = _round(holder, tc, r, at[1] if at and at[0] == r else 0, sent), None
                failures = 0
                backoff.reset()
            nothing = sorted(sent.nothing)
            log.log(logging.WARNING if nothing else logging.INFO, "holder %d: all %d rounds done%s", holder.id,
                    holder.welcomed.rounds, f"; it contributed nothing to {len(nothing)} of them (round "
                    f"{_ids(nothing)}): its replies arrived after their stages had ended" if nothing else "")
            refused_all = _say_refusals(holder)
            tc.close()
            return EXIT["policy"] if refused_all else EXIT["ok"]
        except PolicyRefused as e:
            log.error("holder %d: refusing the coordinator's settings: %s", holder.id, e)
            return EXIT["policy"]
        except HolderStateError as e:   # its own files: not a connection problem, never retried (federation.md §6)
            log.error("holder %d: refusing to start: %s", holder.id, e)
            return EXIT["state"]
        except (WriteError, LedgerWriteError) as e:
            # its own files cannot be written (disk full, read-only): what it failed to record is not sent, and the
            # files hold what they held before (federation.md §6); a retry would fail the same way
            if tc is not None:
                tc.close()
            log.error("holder %d: stopping: %s. Nothing unrecorded was sent; once the state_dir can be written, start "
                      "the client again with the same --config: it rejoins the run from its own state", holder.id, e)
            return EXIT["state"]
        except _Untrusted as e:   # this holder refuses the coordinator's certificate: retrying cannot change that
            tc.close()
            log.error("holder %d: cannot connect to %s: %s", holder.id, target, e)
            return EXIT["auth"]
        except IdentityInUse as e:
            # two clients with one identity key (two holder configs, two state directories): each would keep half of
            # this holder's privacy spend in its own ledger, and their inputs displace each other's. Stop, never retry.
            if tc is not None:
                tc.close()
            log.error("holder %d: %s. Stop one of them: one client per holder identity, with one state directory",
                      holder.id, e)
            return EXIT["identity"]
        except _Stalled as e:   # transport.md §6.4: a coordinator that never moves on does not keep this holder for ever
            tc.close()
            log.error("holder %d: %s: leaving the run (patience_s in the holder config). Start the client again with "
                      "the same --config to rejoin; it continues from its own state", holder.id, e)
            return EXIT["unreachable"]
        except _Ended as e:
            tc.close()
            log.log(logging.INFO if e.code == EXIT["ok"] else logging.WARNING,
                    "holder %d: the coordinator ended the run after round %s: %s", holder.id, e.after_round, e.why_text)
            refused_all = _say_refusals(holder)   # as at the end of the last round: never a quiet exit 0
            return EXIT["policy"] if refused_all and e.code == EXIT["ok"] else e.code
        except _Resume as e:
            at, why = (e.round, e.stage), e.why
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            if code in FATAL_CODES:
                log.error("holder %d: the coordinator refused this holder's certificate", holder.id)
                return EXIT["auth"]
            why = f"{code}"
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                # mid-run, a failed call's own reason is the dropped connection (a coordinator restart reads as
                # "socket closed"): ask afresh what stops a connection now
                problem = (classify_connect_error(e, target=target, server_name=server_name)
                           if holder.welcomed is None else None) or (tc.connect_problem() if tc is not None else None)
                if problem is not None and problem.final:
                    if tc is not None:
                        tc.close()
                    log.error("holder %d: cannot connect to %s: %s", holder.id, target, problem.text)
                    return EXIT["auth"]
                if problem is not None:
                    why = f"{problem.text}; {code.name}"
                elif holder.welcomed is None:
                    why = (f"no coordinator answers at {target}: is `securefed server` running there? (--server, or "
                           f"the holder config's server; {code.name})")
        except (FrameError, MessageError, Refused, ValueError) as e:
            why = f"{type(e).__name__}: {e}"
        failures += 1
        if failures > max_failures:
            log.error("holder %d: giving up after %d failed attempts (%s)", holder.id, failures, why)
            return EXIT["unreachable"]
        delay = backoff.next_delay()
        log.warning("holder %d: connection problem (%s); retry %d of %d in %.1fs", holder.id, why, failures,
                    max_failures, delay)
        time.sleep(delay)
        tc.reconnect()


class _Ended(Exception):
    """The coordinator said the run is over (transport.md §5.4)."""

    def __init__(self, info: dict) -> None:
        why, after = info.get("why"), info.get("after_round")
        self.after_round = after if isinstance(after, int) and not isinstance(after, bool) else "?"
        self.code, self.why_text = _ENDED.get(why, (EXIT["error"], f"an unknown reason {str(why)[:40]!r}"))
        super().__init__(self.why_text)


class _Stalled(Exception):
    """The coordinator answered "wait" for longer than the holder's patience_s (transport.md §6.4): exit 6."""


class _Untrusted(Exception):
    """The coordinator's certificate fails this holder's TLS checks (transport.md §7.1): exit 3, never retried."""


@dataclass
class _Sent:
    """This client process's replies, across reconnects: ``stages`` (round, stage) it submitted a reply to;
    ``in_sum`` rounds whose released update the coordinator accepted; ``late`` rounds it was told a reply arrived
    too late (transport.md §6.1: said once per round), ``nothing`` those of them it contributed nothing to;
    ``heard_at`` when the coordinator last sent a stage message (time.monotonic; the welcome counts), against which
    ``patience_s`` is measured (§6.4)."""
    patience_s: float = 86400.0
    heard_at: float = field(default_factory=time.monotonic)
    stages: set[tuple[int, int]] = field(default_factory=set)
    in_sum: set[int] = field(default_factory=set)
    late: set[int] = field(default_factory=set)
    nothing: set[int] = field(default_factory=set)


def _too_late(holder, r: int, stage: Stage, sent: _Sent) -> None:
    """transport.md §6.1: the coordinator answered ACK_TOO_LATE — the stage ended (its deadline) before this reply
    arrived or completed, and the reply counts for nothing. Logged once per round, in words."""
    first = r not in sent.late
    sent.late.add(r)
    if r in sent.in_sum:   # a stage after one of its release stages (consistency, unmask; ckks+secagg's masked part)
        what = f"the update it released earlier in round {r} had reached the coordinator, this reply had not"
    else:
        sent.nothing.add(r)
        what = f"this holder contributed nothing to round {r}"
    log.log(logging.WARNING if first else logging.DEBUG,
            "holder %d: round %d stage %s had already ended when this holder's reply arrived: %s (the "
            "coordinator's deadline for the stage passed first: this holder is too slow for it, or its link is)",
            holder.id, r, stage.name, what)


class _Resume(Exception):
    def __init__(self, r: int, stage: int, why: str) -> None:
        super().__init__(why)
        self.round, self.stage, self.why = r, stage, why


def _wait_info(payload: bytes) -> dict:
    """A WAIT frame's JSON object (transport.md §5: its reason, next_round, why, after_round); anything else the
    coordinator sends — not UTF-8, not strict JSON, nested too deeply, not an object — is a FrameError: the
    holder trusts nothing it is sent, and its connection loop treats it as a failed attempt."""
    if not payload:
        return {}
    try:
        info = jsonio.loads(bytes(payload).decode("utf-8"))
    except ValueError as e:   # UnicodeDecodeError, json.JSONDecodeError; too deep a nesting (jsonio.loads)
        raise FrameError(f"the coordinator's WAIT payload is not JSON ({type(e).__name__}: {e})"[:200]) from None
    if not isinstance(info, dict):
        raise FrameError(f"the coordinator's WAIT payload is not a JSON object (got {type(info).__name__})")
    return info


def _round(holder, tc, r: int, s: int, sent: _Sent) -> int:
    """One round as the coordinator drives it: fetch the next stage message, handle it, reply.
    Returns the next round to ask for. A dropped connection raises _Resume(r, s): the holder comes
    back to the same stage of the same round (its round state is in memory; nothing is re-sent)."""
    from securefed.transport.client import Refused

    dim = holder.welcomed.dim

    def theta_buffer(h):   # θ (exactly 4·P bytes) into one buffer allocated up front, handed over without a copy
        return BufferSink(h.total_len) if h.kind == Kind.STAGE and h.stage == Stage.MODEL and \
            h.total_len == 4 * dim else None
    while True:
        try:
            # a long poll of up to 30 s, never past this holder's patience (§6.4)
            left = sent.patience_s - (time.monotonic() - sent.heard_at)
            f = tc.fetch(r, s, (Kind.STAGE,), wait_s=min(30.0, max(1.0, left)), max_len=max(4 * dim, MAX_MESSAGE),
                         sink_for=theta_buffer)
        except grpc.RpcError as e:
            if getattr(e, "code", lambda: None)() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED):
                raise
            raise _Resume(r, s, f"fetch failed: {e.code() if hasattr(e, 'code') else e}") from None
        if f.kind == Kind.WAIT:
            info = _wait_info(f.payload)
            why = info.get("reason")
            if why in ("not_open", "not_yet"):
                quiet = time.monotonic() - sent.heard_at
                if quiet > sent.patience_s:   # §6.4: reconnects do not restart this clock, a stage message does
                    raise _Stalled(f"the coordinator has sent no stage message for {quiet:.0f} s (round {r}: "
                                   f"{'the round has not opened' if why == 'not_open' else 'its next stage has not come'})")
                continue
            if why == "ended":
                raise _Ended(info)
            if why in ("not_in_cohort", "over"):
                holder.end_round(r)
                nxt = info.get("next_round")
                return nxt if isinstance(nxt, int) and not isinstance(nxt, bool) and nxt > r else r + 1
            raise FrameError(f"the coordinator answered {why!r}")
        sent.heard_at = time.monotonic()
        vanish = holder.cfg.vanish_at
        if vanish is not None and (r, f.stage) >= tuple(vanish):   # tests: a holder killed mid-round
            log.error("holder %d: test hook vanish_at %s: killing this process", holder.id, vanish)
            os.kill(os.getpid(), signal.SIGKILL)
        reply = holder.handle(r, f.stage, f.payload)
        s = f.stage + 1
        if reply is None:
            continue
        resend = (r, f.stage) in sent.stages
        sent.stages.add((r, f.stage))
        try:
            tc.submit(r, f.stage, Kind.REPLY, reply, timeout=900.0 if f.stage in RELEASE_STAGES else 120.0)
            if f.stage in RELEASE_STAGES:
                sent.in_sum.add(r)
        except Refused as e:   # e.g. the stage closed: the holder is dropped for it; it never sends it again
            if e.status == ACK_ALREADY_REPLIED and not resend:
                # transport.md §6.3: this process never sent this reply, yet one under this holder's certificate was
                # committed — another client holds this holder's identity (a restarted holder never re-enters a
                # round it accepted: its next round is persisted at acceptance, H7)
                holder.end_round(r)
                raise IdentityInUse(f"another process is taking part as holder {holder.id} with this holder's "
                                    f"certificate: the coordinator already had its reply to round {r} stage "
                                    f"{Stage(f.stage).name}, which this client never sent") from None
            if e.status == ACK_TOO_LATE:
                _too_late(holder, r, Stage(f.stage), sent)
            else:
                log.warning("holder %d: round %d stage %s reply refused: %s", holder.id, r, Stage(f.stage).name, e)
        except grpc.RpcError as e:
            raise _Resume(r, s, f"submit failed: {e.code() if hasattr(e, 'code') else e}") from None
