"""Aggregator-side state machine (protocols/secagg.md §5.1, §6, MUST rules S1–S7, unmasking §6.4).

``receive(sender, bytes)`` during a stage (sender = the transport-authenticated holder id),
``close_stage() -> {holder: bytes}`` to end it. Memory is O(P): masked inputs are added into one
running ring sum on arrival and never stored. Invalid messages drop their sender (S6) silently.
Unmasking (§6.4) subtracts every mask from that running sum in place; with an ``executor`` (the
caller's threads) it does so over 16-byte-aligned ranges of the sum in parallel, the same bits.
"""

from __future__ import annotations

import enum
import itertools
import logging
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from pathlib import Path

import numpy as np

from securefed.primitives import shamir
from securefed.primitives.keys import X25519KeyPair, validate_x25519_public, verify_signature
from securefed.secagg.roster import Roster
from securefed.primitives.prg import accumulate_masks
from securefed.secagg import common as cm
from securefed.secagg.config import SecAggConfig
from securefed.secagg.errors import MessageError, SecAggAborted
from securefed.secagg.messages import (KIND_B, KIND_S, AdvertiseKeys, ConsistencySignature, ForwardedShares, KeyRoster,
                                       MaskedInput, RoundStart, ShareKeys, SurvivorList, UnmaskRequest, UnmaskShares,
                                       decode, encode)

__all__ = ["ServerStage", "SERVER_TRANSITIONS", "SecAggServer", "MAX_RECOVERY_TRIES"]

log = logging.getLogger("securefed.secagg")
# §6.4: reconstructions tried per secret when the first t shares fail their check (a holder sent wrong shares)
MAX_RECOVERY_TRIES = 256


class ServerStage(enum.Enum):
    COLLECT_ADVERTISE = "collect_advertise"
    COLLECT_SHARES = "collect_shares"
    COLLECT_MASKED = "collect_masked"
    COLLECT_SIGNATURES = "collect_signatures"
    COLLECT_UNMASK = "collect_unmask"
    FINISHED = "finished"
    ABORTED = "aborted"


SERVER_TRANSITIONS = {
    ServerStage.COLLECT_ADVERTISE: (AdvertiseKeys, ServerStage.COLLECT_SHARES),
    ServerStage.COLLECT_SHARES: (ShareKeys, ServerStage.COLLECT_MASKED),
    ServerStage.COLLECT_MASKED: (MaskedInput, ServerStage.COLLECT_SIGNATURES),
    ServerStage.COLLECT_SIGNATURES: (ConsistencySignature, ServerStage.COLLECT_UNMASK),
    ServerStage.COLLECT_UNMASK: (UnmaskShares, ServerStage.FINISHED),
}


class _Invalid(Exception):
    pass


class SecAggServer:
    def __init__(self, *, config: SecAggConfig, cohort: Iterable[int], vector_length: int, round_index: int,
                 session_context: bytes, roster: Roster, transcript_dir: Path | None = None,
                 executor: Executor | None = None) -> None:
        if not isinstance(config, SecAggConfig) or not isinstance(roster, Roster):
            raise TypeError("config must be a SecAggConfig and roster a Roster")
        if executor is not None and not isinstance(executor, Executor):
            raise TypeError("executor must be a concurrent.futures.Executor")
        self.executor = executor   # threads for unmasking (§6.4); may be set before the last close_stage
        ids = tuple(sorted(set(cohort)))
        if any(j not in roster for j in ids):
            raise ValueError("cohort names holders outside the roster")
        if not isinstance(vector_length, int) or vector_length < 1:
            raise ValueError("vector_length must be a positive int")
        th = config.thresholds(len(ids))
        self.start = RoundStart(bytes(session_context), round_index, ids, config.ring_bits, vector_length,
                                th.threshold, th.min_survivors, th.degree)
        self._phash = cm.params_hash(self.start)
        self.graph = cm.graph_for(self.start, self._phash)
        self.ring = cm.ring_of(self.start)
        self._config, self._roster = config, roster
        self.stage = ServerStage.COLLECT_ADVERTISE
        self.offenders: set[int] = set()
        self._got: dict[int, object] = {}  # sender -> accepted message of the current stage
        self.adverts: dict[int, AdvertiseKeys] = {}
        self.u2: dict[int, ShareKeys] = {}
        self.u3: tuple[int, ...] = ()
        self.share_suspects: frozenset[int] = frozenset()   # senders whose shares fit no verified secret (§6.4)
        self.total = np.zeros(vector_length, dtype=self.ring.dtype)  # (P,) running ring sum, O(P)
        self._transcript, self._seq = (Path(transcript_dir) if transcript_dir else None), 0
        if self._transcript:
            self._transcript.mkdir(parents=True, exist_ok=True)

    def round_start(self) -> bytes:
        return encode(self.start)

    def _expected(self) -> set[int]:
        s = {ServerStage.COLLECT_ADVERTISE: set(self.start.cohort), ServerStage.COLLECT_SHARES: set(self.adverts),
             ServerStage.COLLECT_MASKED: set(self.u2), ServerStage.COLLECT_SIGNATURES: set(self.u3),
             ServerStage.COLLECT_UNMASK: set(getattr(self, "u4", {}))}.get(self.stage, set())
        return s - self.offenders

    # -- receiving ------------------------------------------------------------------------------
    def receive(self, sender: int, data: bytes) -> None:
        """Accept one message from ``sender`` in the current stage (S1–S6)."""
        if self.stage not in SERVER_TRANSITIONS:
            raise ValueError(f"server stage {self.stage.value} accepts no messages")
        if self._transcript is not None:  # every byte received, before any parsing
            (self._transcript / f"{self._seq:06d}-{self.stage.value}-from-{int(sender)}.bin").write_bytes(bytes(data))
            self._seq += 1
        if sender not in self._expected() or sender in self._got:
            return  # S1: not expected now, or a second message (the first one stands)
        try:
            msg = decode(data)
            expected_type, _ = SERVER_TRANSITIONS[self.stage]
            if not isinstance(msg, expected_type) or msg.sender != sender:
                raise _Invalid()
            getattr(self, "_check_" + expected_type.__name__)(msg)
        except (MessageError, _Invalid, ValueError):
            self.offenders.add(sender)  # S6: dropped, no oracle
            return
        self._got[sender] = msg

    def accept_streamed_masked(self, sender: int) -> None:
        """Record ``sender``'s masked input that a streaming transport already folded into ``total``.

        For transports that add chunks of y_i into ``self.total`` as they arrive (O(chunk) memory)
        instead of calling ``receive`` with the whole message: the transport has checked S1 and S4
        (authenticated sender, ring bits k, exactly P words) and undoes a half-received input itself.
        It is also responsible for the transcript of those bytes. ValueError if not expected now (S1).
        """
        if self.stage is not ServerStage.COLLECT_MASKED or sender not in self._expected() or sender in self._got:
            raise ValueError(f"a masked input from {sender} is not expected now")
        self._got[sender] = MaskedInput(sender, self.ring.bits, np.empty(0, dtype=self.ring.dtype))

    def _check_AdvertiseKeys(self, m: AdvertiseKeys) -> None:  # S2
        signed = cm.advert_message(self._phash, m.sender, m.c_public, m.s_public, m.commitment)
        if not verify_signature(self._roster.public_key(m.sender), m.signature, signed) or m.c_public == m.s_public:
            raise _Invalid()
        validate_x25519_public(m.c_public)
        validate_x25519_public(m.s_public)

    def _check_ShareKeys(self, m: ShareKeys) -> None:  # S3
        want = sorted((self.graph.neighbours(m.sender) & self.adverts.keys()))
        if [j for j, _ in m.ciphertexts] != want:
            raise _Invalid()

    def _check_MaskedInput(self, m: MaskedInput) -> None:  # S4
        if m.ring_bits != self.ring.bits or m.vector.shape[0] != self.start.length:
            raise _Invalid()
        np.add(self.total, m.vector, out=self.total)  # accumulate at once: individual y_i are not kept

    def _check_ConsistencySignature(self, m: ConsistencySignature) -> None:  # S5
        if not verify_signature(self._roster.public_key(m.sender), m.signature, cm.consistency_message(self.sid, self.u3)):
            raise _Invalid()

    def _check_UnmaskShares(self, m: UnmaskShares) -> None:  # S5
        holders, alive, dropped = self.graph.holders(m.sender), set(self.u3), set(self.dropped_after_sharing)
        for j, kind, share in m.shares:
            if j not in holders or not ((kind == KIND_B and j in alive) or (kind == KIND_S and j in dropped)):
                raise _Invalid()
            shamir.share_from_bytes(share)

    # -- closing stages -------------------------------------------------------------------------
    def close_stage(self) -> dict[int, bytes]:
        """End the current stage; return the next message for each holder still in the round."""
        if self.stage not in SERVER_TRANSITIONS:
            raise ValueError(f"server stage {self.stage.value} cannot be closed")
        got = {j: m for j, m in self._got.items() if j not in self.offenders}
        self._got = {}
        try:
            out = getattr(self, "_close_" + self.stage.value)(got)
        except SecAggAborted:
            self.stage = ServerStage.ABORTED
            self.total = None
            raise
        self.stage = SERVER_TRANSITIONS[self.stage][1]
        return out

    def _need(self, ids, what: str) -> None:  # S7
        if len(ids) < self.start.min_survivors:
            raise SecAggAborted(f"only {len(ids)} holders {what}; t_min is {self.start.min_survivors}")

    def _close_collect_advertise(self, got: dict) -> dict[int, bytes]:
        seen: dict[bytes, list[int]] = {}
        for j, a in got.items():
            for k in (a.c_public, a.s_public):
                seen.setdefault(k, []).append(j)
        self.offenders |= {j for owners in seen.values() if len(owners) > 1 for j in owners}  # S2 duplicates
        self.adverts = {j: a for j, a in sorted(got.items()) if j not in self.offenders}
        self._need(self.adverts, "advertised keys")
        adverts = tuple(self.adverts.values())
        self.sid = cm.session_id(self._phash, adverts)
        data = encode(KeyRoster(adverts))
        return {j: data for j in self.adverts}

    def _close_collect_shares(self, got: dict) -> dict[int, bytes]:
        self.u2 = dict(sorted(got.items()))
        self._need(self.u2, "shared their keys")
        for i in self.u2:  # S7: every secret we may need must have >= t holders left
            if len(self.graph.holders(i) & self.u2.keys()) < self.start.threshold:
                raise SecAggAborted(f"fewer than t share holders of {i} remain")
        inbox: dict[int, list] = {i: [] for i in self.u2}
        for j, m in self.u2.items():
            for i, ct in m.ciphertexts:
                if i in inbox:
                    inbox[i].append((j, ct))
        return {i: encode(ForwardedShares(tuple(sorted(v)))) for i, v in inbox.items()}

    def _close_collect_masked(self, got: dict) -> dict[int, bytes]:
        self.u3 = tuple(sorted(got))
        self._need(self.u3, "sent masked inputs")
        data = encode(SurvivorList(self.u3))
        return {i: data for i in self.u3}

    @property
    def dropped_after_sharing(self) -> tuple[int, ...]:
        """U2 \\ U3. A holder that misbehaves after its masked input was summed stays in U3."""
        return tuple(sorted(set(self.u2) - set(self.u3)))

    def _close_collect_signatures(self, got: dict) -> dict[int, bytes]:
        self.u4 = dict(sorted(got.items()))
        self._need(self.u4, "signed the survivor list")
        req = UnmaskRequest(self.u3, self.dropped_after_sharing, tuple((j, m.signature) for j, m in self.u4.items()))
        data = encode(req)
        return {i: data for i in self.u4}

    def _close_collect_unmask(self, got: dict) -> dict[int, bytes]:
        self._need(got, "sent unmasking shares")
        t = self.start.threshold
        shares: dict[tuple[int, int], dict[int, int]] = {}
        for holder, m in got.items():
            for j, kind, s in m.shares:
                shares.setdefault((j, kind), {})[holder] = shamir.share_from_bytes(s)

        suspects: set[int] = set()   # senders of a share that did not fit a verified secret (§6.4)

        def secret(j: int, kind: int, check: Callable[[bytes], bool], what: str) -> bytes:
            have = shares.get((j, kind), {})
            if len(have) < t:
                raise SecAggAborted(f"fewer than t shares to unmask holder {j}")
            found = _recover(have, t, check, suspects)
            if found is None:   # S7: j dealt inconsistent shares, or more than |shares| - t senders lied
                raise SecAggAborted(f"no {t} of the {len(have)} shares of holder {j} reconstruct {what}")
            return found

        def is_commitment_of(i: int):
            return lambda b: cm.commitment(self._phash, i, b) == self.adverts[i].commitment

        def is_key_of(j: int):
            return lambda s: X25519KeyPair.from_private_bytes(s).public == self.adverts[j].s_public

        keys: list[tuple[bytes, int]] = []
        r, sid = self.start.round_index, self.sid
        for i in self.u3:  # §6.4: remove self masks of survivors
            b = secret(i, KIND_B, is_commitment_of(i), "a self-mask seed matching its commitment")
            keys.append((cm.self_mask_key(b, sid=sid, round_index=r, i=i), -1))
        alive = set(self.u3)
        for j in self.dropped_after_sharing:  # §6.4: remove pairwise masks between dropped and survivors
            partners = sorted(self.graph.neighbours(j) & alive)
            if not partners:
                continue
            s_j = X25519KeyPair.from_private_bytes(secret(j, KIND_S, is_key_of(j),
                                                          "a masking key matching its advertisement"))
            for i in partners:
                k = cm.pairwise_key(s_j.shared(self.adverts[i].s_public), sid=sid, round_index=r, i=i, j=j)
                keys.append((k, -cm.sigma(i, j)))
        accumulate_masks(self.total, keys, self.ring, chunk_elements=self._config.chunk_elements, executor=self.executor)
        self.survivors = frozenset(self.u3)
        self.share_suspects = frozenset(suspects)
        if suspects:   # (several liars can cancel out in one subset: these ids are likely, not proven, liars)
            log.warning("round %d: unmasking shares from holders %s did not fit the secrets their checks verified; "
                        "the sum was rebuilt from other shares (secagg.md §6.4)", r, sorted(suspects))
        return {}

    @property
    def result(self) -> np.ndarray:
        if self.stage is not ServerStage.FINISHED:
            raise ValueError(f"no result in stage {self.stage.value}")
        return self.total


def _recover(have: Mapping[int, int], t: int, check: Callable[[bytes], bool], suspects: set[int]) -> bytes | None:
    """The secret of ``have`` (sender -> share) that passes ``check``, or None (protocols/secagg.md §6.4, S7).

    One holder in U4 could otherwise abort every round after the others released their masked inputs by
    sending a wrong share (audit: malicious holder, threat SA-21). ``check`` — b_i against commit_i, s_j^SK
    against s_j^PK — is binding, so trying other t-subsets can only find the dealt secret, never a wrong one.
    Senders already in ``suspects`` are tried last; after a success that needed more than one try, every sender
    whose share does not lie on the same polynomial joins them, so the next secrets are usually found at the
    first try (when the first t pass, nothing more is reconstructed: that scan costs one interpolation per
    sender, and an honest round must not pay it for every secret). One wrong share
    always changes the interpolated f(0), so against a single liar the subset found holds only dealt shares and
    ``suspects`` is exactly the liar; several liars can make their errors cancel in one subset (Σ λ_h·e_h = 0),
    so ``suspects`` only orders the search: it is no proof against anyone."""
    order = sorted(have, key=lambda h: (h in suspects, h))
    tried: set[tuple[int, ...]] = set()
    for e in range(len(order) - t + 1):                 # leave out e senders, fewest first
        for out in itertools.combinations(order, e):
            subset = tuple(h for h in order if h not in out)[:t]
            if subset in tried:
                continue
            if len(tried) >= MAX_RECOVERY_TRIES:
                return None
            tried.add(subset)
            try:
                s = shamir.reconstruct({h: have[h] for h in subset}, threshold=t)
            except ValueError:                          # f(0) is not a 32-byte secret
                continue
            if not check(s):
                continue
            if len(tried) == 1:                         # the first t passed: an honest round pays no more
                return s
            base = {h: have[h] for h in subset[:t - 1]}
            for h in order:                             # t−1 dealt shares and h's: the same f(0) iff h's is dealt
                if h not in subset and _reconstruct_or_none({**base, h: have[h]}, t) != s:
                    suspects.add(h)
            return s
    return None


def _reconstruct_or_none(shares: Mapping[int, int], t: int) -> bytes | None:
    try:
        return shamir.reconstruct(shares, threshold=t)
    except ValueError:
        return None
