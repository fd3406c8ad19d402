"""The Ray channel: each holder is a Ray actor that owns its Holder; the Coordinator runs in the driver.

    actor (one per holder, its own process)     Holder: its shard, model replica and AdamW state, secure-
                                                aggregation and CKKS state, its ledger in its state dir
    RayChannel (the driver)                     a stage's messages go out to every addressed actor at once;
                                                replies are taken as they arrive, until the stage deadline

It carries exactly the bytes the other channels carry: encoded messages in, encoded replies out, large
replies folded into the same sinks (the masked-input fold of transport/accumulate.py) one at a time as
they arrive, so the coordinator still holds only masked vectors in flight and the sum. What Ray adds is
concurrency: every addressed holder handles its stage message at the same time (training in parallel),
which the in-process channel cannot do. A θ_r sent to many holders is put in Ray's object store once.

Failures. An actor that dies (killed, out of memory, its node lost) makes its pending call fail with
RayActorError: it is a dropped holder from then on, exactly as a holder process that dies under the gRPC
channel (the round completes with ≥ t_min survivors or aborts, and the ledgers say which). A holder that
misses a stage deadline is absent from that stage (a dropout); its late reply is discarded. An actor runs
its calls one after another, so while a late call still runs the holder's later calls wait behind it: the
end of a round is not waited for at such a holder (a hung actor would hold every round for that wait);
its late call's outcome is checked when it ends (a death or a handler error drops it then). A holder
whose handler raises an unexpected error is killed and dropped (a gRPC holder process would exit).

Actors are created with ``max_restarts=0``: a restarted holder would rejoin from its state directory,
but a round already in progress is never resumed (protocols/federation.md §6), so it stays dropped.
The run directory must be visible to every node at the same path (a shared filesystem on a cluster):
each actor reads its keys from RUN_DIR/pki and keeps its state in RUN_DIR/holders/<id>, as a deployed
holder keeps its own.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from collections.abc import Callable, Mapping

import numpy as np
import ray

from securefed.federation.channel import Channel, SinkFactory, deliver
from securefed.federation.stages import Stage

__all__ = ["RayChannel", "HolderActor", "start_holders"]

log = logging.getLogger("securefed.channel.ray")

_BROADCAST = 1 << 16      # a payload of this size or more sent to several holders goes into the object store once


class HolderActor:
    """One holder in its own Ray worker process. Everything it holds comes from its own HolderConfig and
    the files it names (keys under ``pki``, state under ``state_dir``), as for `securefed client`."""

    def __init__(self, cfg, torch_threads: int) -> None:
        import torch

        from securefed.federation.holder import Holder
        from securefed.secagg import Roster
        from securefed.transport.pki import Layout, load_identity

        torch.set_num_threads(torch_threads)
        lay = Layout(cfg.pki)
        self.cfg = cfg
        self.holder = Holder(cfg, identity=load_identity(lay.holder_identity(cfg.holder_id)),
                             roster=Roster.load(lay.roster))
        self.holder.prepare_data()      # its own rows, before the coordinator sends anything

    def ready(self) -> dict:
        return {"holder": self.cfg.holder_id, "pid": os.getpid(), "node": ray.get_runtime_context().get_node_id()}

    def welcome(self, data: bytes) -> str | None:
        """None if the holder joins; else why it leaves the run (its floors refuse it, H1)."""
        from securefed.federation.holder import HolderStateError, PolicyRefused
        from securefed.federation.messages import MessageError

        try:
            self.holder.welcome(data)
        except (PolicyRefused, HolderStateError, MessageError) as e:
            return f"{type(e).__name__}: {e}"
        return None

    def handle(self, round_index: int, stage: int, payload: bytes) -> bytes | None:
        vanish = self.cfg.vanish_at
        if vanish is not None and (round_index, stage) >= tuple(vanish):   # tests: a holder killed mid-round
            log.error("holder %d: test hook vanish_at %s: killing this actor's process", self.cfg.holder_id, vanish)
            os.kill(os.getpid(), signal.SIGKILL)
        reply = self.holder.handle(round_index, stage, payload)
        if isinstance(reply, memoryview):    # a MaskedInput formed in place: to the object store as an array
            return np.frombuffer(reply, dtype=np.uint8)      # (out of band, one copy; a memoryview does not pickle)
        return reply

    def end_round(self, round_index: int) -> None:
        self.holder.end_round(round_index)


def blas_env() -> dict[str, str]:
    """The BLAS thread settings of this (the driver's) process, for every holder actor.

    Why: a holder's clip norm (privacy/clipping.py, also primitives/quantize.py and the randomized
    rounding check of privacy/encoders.py) is ``np.linalg.norm`` — an OpenBLAS dot whose summation
    order depends on its thread count — so the last bits of the clipped update, and through the
    rounding of the DP encoding the model, depend on it. Ray gives an actor of < 2 CPUs
    OMP_NUM_THREADS=1 where the in-process and gRPC holders run with this process's setting (OpenBLAS
    default: one thread per core), so without this a Ray run differs from the others under distributed
    DP (tests/federation/test_conformance.py). The norms are tiny next to training: the cost is nil."""
    env = {k: os.environ[k] for k in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "MKL_NUM_THREADS")
           if k in os.environ}
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:     # not Linux
        cores = os.cpu_count() or 1
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS", str(cores))
    return env


def start_holders(configs: Mapping[int, object], *, cpus: float, gpus: float, run_token: str) -> dict:
    """One actor per holder, each asking Ray for ``cpus`` CPUs and ``gpus`` GPUs; {holder id: handle}.
    Creation is asynchronous: RayChannel.open waits for them (up to the join deadline)."""
    cls = ray.remote(HolderActor)
    env = {"env_vars": blas_env()}
    out = {}
    for h, hc in sorted(configs.items()):
        threads = hc.hardware.torch_threads or max(1, int(cpus))
        out[h] = cls.options(num_cpus=cpus, num_gpus=gpus, max_restarts=0, max_task_retries=0, runtime_env=env,
                             name=f"securefed-{run_token}-holder-{h}").remote(hc, threads)
    return out


class RayChannel(Channel):
    def __init__(self, actors: Mapping[int, object], *, join_timeout: float = 120.0, watch=None) -> None:
        self.actors = dict(actors)
        self.gone: dict[int, str] = {}       # holders out of the run for good: refused the welcome, or dead
        self.join_timeout, self.watch = join_timeout, watch
        self.nodes: dict[int, str] = {}
        self._oneway: dict[object, tuple[int, str]] = {}  # refs not waited for (MODEL, a busy holder's end of
        #                                                     round): {ref: (holder, what)}, checked for errors
        self._late: dict[int, object] = {}   # holder -> its last call that missed its deadline, while it runs
        self.bytes_up = self.bytes_down = 0
        self._announced = False

    # ------------------------------------------------------------------ the run
    def open(self, *, welcome_for: Callable[[int], bytes], run_id: bytes) -> None:
        """Wait for the actors to start (their data loaded), then welcome each; those that cannot start by
        the join deadline or refuse the welcome leave the run.

        The join deadline counts from the last actor that came up (protocols/federation.md §4.1 step 2,
        Ray): actors start together and share the cluster's cores, so a hundred of them on 16 cores come
        up one after another over minutes (each imports torch, Lightning and transformers, ≈ 9 CPU-s)
        though none is stuck. The wait ends when every actor has started, or when none has for
        ``join_timeout`` seconds; those still starting then are dropped and killed."""
        self.announce_start()
        started = self._gather({a.ready.remote(): h for h, a in self._alive()}, self.join_timeout, "start",
                               extend=True)
        for h, info in started.items():
            self.nodes[h] = info["node"]
        for h, _ in self._alive():
            if h not in started:
                self._drop(h, "did not start by the join deadline", kill=True)
        refs = {a.welcome.remote(welcome_for(h)): h for h, a in self._alive()}
        if self.watch is not None:
            self.watch.phase("welcome (holders check the run against their floors)", list(refs.values()))
        for h, why in self._gather(refs, self.join_timeout, "welcome").items():
            if why is not None:
                self._drop(h, f"it leaves the run: {why}")

    def announce_start(self) -> None:
        """Show "starting holders" from the moment the actors are created (run_ray calls it then, before the
        coordinator evaluates the untrained model): their start may take minutes; shown once."""
        if self.watch is not None and not self._announced:
            self._announced = True
            self.watch.start()
            self.watch.phase("starting holders (imports, data)", [h for h, _ in self._alive()])

    def available(self, round_index: int, *, want: int, timeout: float) -> list[int]:
        self.bytes_up = self.bytes_down = 0
        if self.watch is not None:
            self.watch.begin_round(round_index)
        return sorted(h for h, _ in self._alive())

    def send(self, round_index: int, stage: int, outbox: Mapping[int, bytes]) -> None:
        self._oneway.update({ref: (h, Stage(stage).name) for ref, h in self._dispatch(round_index, stage, outbox).items()})

    def exchange(self, round_index: int, stage: int, outbox: Mapping[int, bytes], *, deadline: float,
                 max_reply: int) -> dict[int, bytes]:
        refs = self._dispatch(round_index, stage, outbox)
        replies = self._gather(refs, deadline, Stage(stage).name, max_reply=max_reply)
        return {h: replies[h] for h in sorted(replies) if replies[h] is not None}

    def collect(self, round_index: int, stage: int, outbox: Mapping[int, bytes], *, deadline: float,
                sink: SinkFactory, max_reply: int) -> set[int]:
        done: set[int] = set()

        def fold(h: int, reply: bytes) -> None:     # one reply at a time into the round's sink (O(P) memory)
            if deliver(sink, h, reply):
                done.add(h)
        self._gather(self._dispatch(round_index, stage, outbox), deadline, Stage(stage).name, max_reply=max_reply,
                     on_reply=fold)
        return done

    def end_round(self, round_index: int) -> None:
        """Every live holder ends the round; waited for (up to 120 s) except at a holder whose late call still
        runs: its end_round runs after that call, whenever it ends (a hung actor cost every round 120 s)."""
        self._reap_oneway(wait=0)
        self._reap_late()
        refs = {a.end_round.remote(round_index): h for h, a in self._alive()}
        self._oneway.update({ref: (h, "end of round") for ref, h in refs.items() if h in self._late})
        self._gather({ref: h for ref, h in refs.items() if h not in self._late}, 120.0, "end of round")
        if self.watch is not None:
            self.watch.end_round(round_index)

    def close(self) -> None:
        if self.watch is not None:
            self.watch.stop()
        for h, a in self.actors.items():
            try:
                ray.kill(a)
            except Exception:   # already gone
                pass

    # ------------------------------------------------------------------ moving bytes
    def _alive(self):
        return [(h, a) for h, a in sorted(self.actors.items()) if h not in self.gone]

    def _drop(self, h: int, why: str, *, kill: bool = False) -> None:
        if h in self.gone:
            return
        log.warning("holder %d dropped: %s", h, why)
        self.gone[h] = why
        if self.watch is not None:
            self.watch.dropped(h)
        if kill:
            try:
                ray.kill(self.actors[h])
            except Exception:
                pass

    def _dispatch(self, r: int, stage: int, outbox: Mapping[int, bytes]) -> dict[object, int]:
        """One call per addressed live holder, all at once; {ObjectRef: holder}."""
        shared: dict[int, object] = {}      # id(payload) -> ObjectRef, for a payload sent to many holders
        counts: dict[int, int] = {}
        for p in outbox.values():
            counts[id(p)] = counts.get(id(p), 0) + 1
        refs = {}
        for h, payload in sorted(outbox.items()):
            if h in self.gone or h not in self.actors:
                continue
            arg = payload
            if len(payload) >= _BROADCAST and counts[id(payload)] > 1:
                arg = shared.get(id(payload)) or shared.setdefault(id(payload), ray.put(payload))
            self.bytes_down += len(payload)
            refs[self.actors[h].handle.remote(r, int(stage), arg)] = h
        if self.watch is not None:
            self.watch.stage(Stage(stage), sorted(refs.values()))
        return refs

    def _gather(self, refs: dict, timeout: float, what: str, *, max_reply: int | None = None,
                on_reply: Callable[[int, bytes], None] | None = None, extend: bool = False) -> dict[int, object]:
        """Results of ``refs`` as they complete, until ``timeout`` seconds; a dead actor is dropped, a late
        one is absent. With ``on_reply`` each reply is handed over at once and not kept. With ``extend``
        the ``timeout`` restarts at each result (a wait that ends only when nothing has come for that long)."""
        out: dict[int, object] = {}
        pending, end = list(refs), time.monotonic() + timeout
        while pending:
            left = end - time.monotonic()
            if left <= 0:
                break
            ready, pending = ray.wait(pending, num_returns=1, timeout=min(left, 1.0))
            if ready and extend:
                end = time.monotonic() + timeout
            for ref in ready:
                h = refs[ref]
                ok, value = self._result(h, ref, what)
                if not ok:
                    continue
                if isinstance(value, (bytes, memoryview)) and max_reply is not None:
                    if len(value) > max_reply:
                        log.warning("holder %d: reply of %d bytes exceeds %d; refused", h, len(value), max_reply)
                        continue
                    self.bytes_up += len(value)
                if self.watch is not None:
                    self.watch.replied(h)
                if on_reply is not None and value is not None:
                    on_reply(h, value)
                else:
                    out[h] = value
        for ref in pending:
            log.warning("holder %d: no answer to %s within %.0fs%s; dropped for this stage", refs[ref], what, timeout,
                        " of the last answer" if extend else "")
            self._late[refs[ref]] = ref      # its later calls run after this one (an actor's calls run in order)
            if self.watch is not None:
                self.watch.late(refs[ref])
        self._reap_oneway(wait=0)
        return out

    def _reap_oneway(self, *, wait: float) -> None:
        """Errors of one-way messages (the MODEL stage): a dead actor is dropped, a failed handler logged."""
        if not self._oneway:
            return
        ready, _ = ray.wait(list(self._oneway), num_returns=len(self._oneway), timeout=wait)
        for ref in ready:
            h, what = self._oneway.pop(ref)
            self._result(h, ref, what)

    def _reap_late(self) -> None:
        """Holders whose late call has ended are no longer busy; the call's reply is discarded, but an actor
        that died or a handler that raised in it drops the holder as at any other call."""
        for h, ref in list(self._late.items()):
            if ray.wait([ref], timeout=0)[0]:
                del self._late[h]
                if h not in self.gone:
                    self._result(h, ref, "a stage it answered late")

    def _result(self, h: int, ref, what: str) -> tuple[bool, object]:
        """(True, value), or (False, None) with the holder dropped: its actor died (killed, out of memory,
        its node lost), or its handler raised — a bug, not bad input: the holder process would exit."""
        try:
            value = ray.get(ref)
            if isinstance(value, np.ndarray):     # a masked input from the object store: immutable, zero-copy
                value = memoryview(value).cast("B").toreadonly()
            return True, value
        except ray.exceptions.RayActorError as e:   # str(e) carries the cause (e.g. its constructor's error)
            cause = " ".join(str(e).split())[-400:]
            self._drop(h, f"its actor died during {what} ({type(e).__name__}: {cause})")
        except ray.exceptions.RayTaskError as e:
            log.error("holder %d failed during %s:\n%s", h, what, e)
            self._drop(h, f"its handler raised during {what}", kill=True)
        except ray.exceptions.RayError as e:
            self._drop(h, f"lost during {what} ({type(e).__name__}: {e})", kill=True)
        return False, None
