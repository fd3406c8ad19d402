"""The coordinator's side of each aggregation route, over any channel (protocols/federation.md §4.4).

    secure_sum   SecAgg / SecAgg+ stages START → UNMASK; masked inputs stream into the ring sum
                 (SecureSession: the key stages before training, the rest after; federation.md §4.3)
    ckks_sum     key rotation (when due), CKKS uploads, one decryptor's release (protocols/ckks.md §3, §5)
    plain_sum    the warned baseline: every holder's clipped update, summed here

Each returns what the aggregator may learn: a sum and who is in it. The coordinator (coordinator.py)
turns it into the round's mean; nothing here sees an individual update except ``plain_sum``.
"""

from __future__ import annotations

import logging
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from securefed.ckks import CkksServer, UploadRejected
from securefed.ckks.holder import expected_leader
from securefed.ckks.messages import KeyShareMsg
from securefed.ckks.messages import decode as ckks_decode
from securefed.federation.channel import Channel
from securefed.federation.messages import (CkksAdverts, CkksKeys, CkksRotate, CkksShare, CkksUploadRequest, Decision,
                                           MessageError, decode_as, encode)
from securefed.federation.stages import Deadlines, Stage, secagg_stages
from securefed.primitives.spans import for_spans
from securefed.secagg import Roster, SecAggAborted, SecAggConfig, SecAggServer
from securefed.transport.accumulate import MASKED_PREFIX, RingAccumulator
from securefed.transport.frames import FrameError
from securefed.transport.stream import BytesSink

__all__ = ["MAX_CONTROL", "SecureSum", "SecureSession", "secure_sum", "CkksRoute", "plain_sum"]

log = logging.getLogger("securefed.coordinator")

MAX_CONTROL = 16 << 20       # the largest control reply (ShareKeys of a large cohort)
MAX_CKKS_UPLOAD = 256 << 20


@dataclass
class SecureSum:
    total: np.ndarray                 # Σ_{i ∈ survivors} y_i mod 2^k, dtype of the ring
    survivors: tuple[int, ...]
    dropped: tuple[int, ...] = ()     # U2 \ U3: shared their keys, sent no masked input (their pairs were unmasked)


class _TranscriptSink:
    """Tee a streamed reply into the aggregation transcript (every byte received, before parsing)."""

    def __init__(self, inner, path: Path) -> None:
        self.inner, self.f = inner, open(path, "wb")

    def write(self, offset: int, data: bytes) -> None:
        self.f.write(data)
        self.inner.write(offset, data)

    def check(self) -> None:
        check = getattr(self.inner, "check", None)
        if check is not None:
            check()

    def commit(self) -> None:
        self.f.close()
        self.inner.commit()

    def abort(self) -> None:
        self.f.close()
        self.inner.abort()


class SecureSession:
    """One secure-aggregation round over ``cohort`` (protocols/secagg.md §6) in two halves:

        keys()          RoundStart → AdvertiseKeys, KeyRoster → ShareKeys      (U1, U2)
        finish(ready)   ForwardedShares to ready ∩ U2 → masked inputs streamed into the ring sum,
                        SurvivorList, UnmaskRequest → unmasking across ``threads`` cores

    Under ``secagg`` the coordinator calls keys() before the model goes out, so the holders expand
    their masks while they train (federation.md §4.3); a member of U2 that does not finish training
    (refuses the plan, misses the deadline) is a dropout of U2 \\ U3 to the protocol. Under
    ``ckks+secagg`` both halves run after the CKKS sum. SecAggAborted below the thresholds (S7).
    """

    def __init__(self, channel: Channel, r: int, cohort: list[int], *, length: int, config: SecAggConfig,
                 roster: Roster, context: bytes, deadlines: Deadlines, spool: Path, transcript: Path | None,
                 mode: str = "secagg", threads: int | None = None) -> None:
        self.channel, self.r, self.deadlines, self.spool, self.transcript = channel, r, deadlines, spool, transcript
        self.stages, self.length = secagg_stages(mode), length
        self.threads = threads or os.cpu_count() or 1
        self.sa = SecAggServer(config=config, cohort=cohort, vector_length=length, round_index=r,
                               session_context=context, roster=roster, transcript_dir=transcript)
        self.outbox = {h: self.sa.round_start() for h in cohort}
        self.laps: dict[str, float] = {}   # finish()'s phases, seconds (the metrics row's aggregate_seconds)

    def keys(self) -> frozenset[int]:
        """The key stages; returns U2 (the holders whose ShareKeys the server accepted)."""
        for stage in self.stages[:2]:
            self._exchange(stage)
        return frozenset(self.outbox)

    def finish(self, ready, *, before_unmask=None) -> SecureSum:
        """The masked, consistency and unmask stages over ``ready`` ∩ U2; the ring sum of U3.
        ``before_unmask(survivors)``: called once the survivors are fixed and before any unmask request goes out —
        the last moment before the sum can be revealed (the coordinator's privacy WAL, federation.md §6)."""
        sa, r, transcript = self.sa, self.r, self.transcript
        t = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal t
            now = time.perf_counter()
            self.laps[name] = round(now - t, 4)
            t = now
        self.outbox = {h: m for h, m in self.outbox.items() if h in set(ready)}   # the others: dropped (§8)
        stage = Stage.SECAGG_MASKED
        acc = RingAccumulator.over(sa.total, sa.ring.bits, self.spool)

        def sink(h: int, acc=acc):
            fold = acc.open(h, on_commit=lambda sender: _accept_masked(sa, sender))
            return _TranscriptSink(fold, transcript / f"masked-r{r}-from-{h}.bin") if transcript else fold
        self.channel.collect(r, stage, self.outbox, deadline=self.deadlines.for_stage(stage), sink=sink,
                             max_reply=MASKED_PREFIX + self.length * sa.ring.dtype.itemsize)
        acc.seal()   # undo every half-received masked input now (protocols/transport.md §4.3)
        self.outbox = sa.close_stage()
        lap("masked")        # in process this includes each holder's own y = x + M and encoding, one after another
        self._exchange(Stage.SECAGG_CONSISTENCY)
        lap("consistency")
        if before_unmask is not None:
            before_unmask(tuple(sorted(sa.u3)))        # U3: the masked inputs the sum will hold
        with ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="unmask") as pool:
            sa.executor = pool                       # §6.4 across cores: the same bits as serially
            try:
                self._exchange(Stage.SECAGG_UNMASK)
            finally:
                sa.executor = None
        lap("unmask")
        return SecureSum(sa.result, tuple(sorted(sa.survivors)), sa.dropped_after_sharing)

    def _exchange(self, stage: Stage) -> None:
        for h, data in self.channel.exchange(self.r, stage, self.outbox, deadline=self.deadlines.for_stage(stage),
                                             max_reply=MAX_CONTROL).items():
            self.sa.receive(h, data)                  # S1–S6: invalid messages drop their sender
        self.outbox = self.sa.close_stage()           # S7: SecAggAborted below t_min


def secure_sum(channel: Channel, r: int, cohort: list[int], *, length: int, config: SecAggConfig, roster: Roster,
               context: bytes, deadlines: Deadlines, spool: Path, transcript: Path | None,
               mode: str = "ckks+secagg", threads: int | None = None) -> SecureSum:
    """Both halves of a SecureSession at once (the ckks+secagg route: after the CKKS sum)."""
    s = SecureSession(channel, r, cohort, length=length, config=config, roster=roster, context=context,
                      deadlines=deadlines, spool=spool, transcript=transcript, mode=mode, threads=threads)
    s.keys()
    return s.finish(cohort)


def _accept_masked(sa: SecAggServer, sender: int) -> None:
    try:
        sa.accept_streamed_masked(sender)
    except ValueError as e:
        raise FrameError("masked input not expected from this holder") from e


class CkksRoute:
    """The coordinator's CKKS state across rounds: the public context, the key generation (§3.4)."""

    def __init__(self, policy, roster: Roster, *, ckks_size: int) -> None:
        from securefed.ckks import HolderPublic

        self.policy, self.size = policy, ckks_size
        self.server = CkksServer(policy, {h: HolderPublic(h, k) for h, k in roster.keys.items()})
        self.generation = 0            # highest generation ever started (checkpointed: generations only grow)
        self.epoch: int | None = None
        self.key_holders: frozenset[int] = frozenset()

    def _needs_rotation(self, r: int, cohort: frozenset[int]) -> bool:
        epoch = (r - 1) // self.policy.rotate_key_every_rounds
        return self.server.key_id is None or epoch != self.epoch or not cohort <= self.key_holders

    def rotate(self, channel: Channel, r: int, holders: frozenset[int], deadlines: Deadlines) -> frozenset[int]:
        """A new key generation among ``holders``; returns those that hold the key (§3.2)."""
        gen = max(self.generation, self.server.generation) + 1
        self.generation = gen
        leader = expected_leader(holders, gen)
        rot = encode(CkksRotate(r, gen, tuple(sorted(holders))))
        adverts = {}
        for h, data in channel.exchange(r, Stage.CKKS_ROTATE, {h: rot for h in holders},
                                        deadline=deadlines.control, max_reply=MAX_CONTROL).items():
            try:
                adverts[h] = self.server.relay(data)
            except ValueError as e:
                log.warning("round %d: holder %d's key advert refused: %s", r, h, e)
        if leader not in adverts:
            raise SecAggAborted(f"the key generation's leader {leader} sent no key advert")
        others = tuple(a for h, a in sorted(adverts.items()) if h != leader)
        reply = channel.exchange(r, Stage.CKKS_KEYS, {leader: encode(CkksAdverts(r, gen, others))},
                                 deadline=deadlines.control, max_reply=MAX_CKKS_UPLOAD).get(leader)
        if reply is None:
            raise SecAggAborted(f"the key generation's leader {leader} sent no keys")
        try:
            keys = decode_as(reply, CkksKeys)
            self.server.receive_public_context(keys.public_context, key_holders=frozenset(adverts))
        except (MessageError, ValueError) as e:
            raise SecAggAborted(f"the leader's public context was refused: {e}") from None
        share_out = {}
        for blob in keys.shares:
            try:
                msg = ckks_decode(self.server.relay(blob))
            except ValueError:
                continue
            if isinstance(msg, KeyShareMsg) and msg.receiver in adverts and msg.receiver != leader:
                share_out[msg.receiver] = encode(CkksShare(r, gen, blob, adverts[leader]))
        holding = {leader}
        for h, data in channel.exchange(r, Stage.CKKS_SHARE, share_out, deadline=deadlines.control,
                                        max_reply=MAX_CONTROL).items():
            try:
                d = decode_as(data, Decision)
            except MessageError:
                continue
            if d.accept and d.holder_id == h:
                holding.add(h)
        self.epoch, self.key_holders = (r - 1) // self.policy.rotate_key_every_rounds, frozenset(holding)
        return self.key_holders

    def sum(self, channel: Channel, r: int, ready: list[int], deadlines: Deadlines, *,
            before_decrypt=None, clip: float | None = None) -> tuple[np.ndarray, tuple[int, ...]]:
        """CKKS uploads of ``ready``; the decrypted sum (float64) and its survivors A (§5). ``before_decrypt(A)``:
        called before the aggregate goes to the decryptor — the last moment before this part of the sum is
        revealed (the coordinator's privacy WAL, federation.md §6). ``clip``: each upload is a part of an update
        clipped to it (weights ≤ 1), so a released sum longer than |A|·clip is refused (§5.3 D6)."""
        cohort = frozenset(ready)
        holders = cohort if self.policy.key_scope == "cohort" else cohort | self.key_holders
        if self._needs_rotation(r, cohort):
            self.rotate(channel, r, holders, deadlines)
        members = sorted(cohort & self.key_holders)
        if not members:
            raise SecAggAborted("no holder of this round holds the CKKS key")
        self.server.begin_round(r, frozenset(members), self.size)
        req = encode(CkksUploadRequest(r, self.server.generation, self.server.key_id, tuple(members)))
        sinks: dict[int, BytesSink] = {}

        def sink(h: int) -> BytesSink:
            sinks[h] = BytesSink(MAX_CKKS_UPLOAD)
            return sinks[h]
        for h in sorted(channel.collect(r, Stage.CKKS_UPLOAD, {h: req for h in members}, deadline=deadlines.upload,
                                        sink=sink, max_reply=MAX_CKKS_UPLOAD)):
            try:
                self.server.receive_upload(h, sinks[h].value)
            except UploadRejected as e:
                log.warning("round %d: %s", r, e)
        survivors = tuple(sorted(self.server.survivors))
        if len(survivors) < max(1, self.policy.min_survivors):
            raise SecAggAborted(f"only {len(survivors)} CKKS uploads were accepted")
        if before_decrypt is not None:
            before_decrypt(survivors)
        decryptor = members[0]    # ckks.md §5.3 D5: the upload cohort's smallest member decrypts, once
        out = channel.exchange(r, Stage.CKKS_DECRYPT, {decryptor: self.server.aggregate()},
                               deadline=deadlines.control, max_reply=8 * self.size).get(decryptor)
        if out is None or len(out) != 8 * self.size:   # the designated decryptor is gone: no CKKS sum this round
            raise SecAggAborted(f"the decryptor {decryptor} released no sum")
        total = np.frombuffer(out, dtype="<f8").astype(np.float64)
        if not np.all(np.isfinite(total)):
            raise SecAggAborted("the decrypted CKKS sum is not finite")
        if clip is not None:   # §5.3 D6: the decryptor is a holder; what it releases is checked against what A can sum to
            n = len(survivors)
            bound = n * clip + math.sqrt(self.size) * self.policy.error_bound(n, clip)
            norm = float(np.linalg.norm(total))
            if norm > bound:
                raise SecAggAborted(f"the decryptor {decryptor} released a CKKS sum of norm {norm:.6g}, more than the "
                                    f"{n} clipped uploads can sum to ({bound:.6g}): a wrong sum, not applied")
        return total, survivors


def plain_sum(channel: Channel, r: int, ready: list[int], *, dim: int, clip: float, deadlines: Deadlines):
    """The warned baseline: each holder's clipped float32 update in the clear, clipped again here (a
    holder cannot exceed C by sending more) and summed in float64."""
    from securefed.privacy.clipping import l2_clip

    sinks: dict[int, BytesSink] = {}

    def sink(h: int) -> BytesSink:
        sinks[h] = BytesSink(4 * dim)
        return sinks[h]
    got = channel.collect(r, Stage.PLAIN_UPLOAD, {h: b"" for h in ready}, deadline=deadlines.upload, sink=sink,
                          max_reply=4 * dim)
    total, survivors = np.zeros(dim, dtype=np.float64), []
    for h in sorted(got):
        v, sinks[h] = sinks[h].value, None          # each update is let go once it is summed
        x = np.frombuffer(v, dtype="<f4") if v is not None and len(v) == 4 * dim else None
        try:
            if x is None:
                raise ValueError("wrong length")
            # ValueError on a non-finite coordinate (its norm is not finite); within C the update itself, read only
            y = l2_clip(x, clip, copy=False)[0]
        except ValueError:
            log.warning("round %d: holder %d's plain update is malformed; dropped", r, h)
            continue
        for_spans(dim, lambda lo, hi, y=y: np.add(total[lo:hi], y[lo:hi], out=total[lo:hi]))
        survivors.append(h)
    out = np.empty(dim, np.float32)
    for_spans(dim, lambda lo, hi: np.copyto(out[lo:hi], total[lo:hi], casting="unsafe"))
    return out, tuple(survivors)
