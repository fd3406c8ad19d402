"""Holder-side state machine (protocols/secagg.md §5.2, §6, MUST rules C1–C10).

``SecAggClient.handle(bytes) -> bytes`` takes one serialized server message and returns the
serialized reply; transport-agnostic. A message the current stage does not accept raises
:class:`UnexpectedMessage` and leaves the state unchanged; a MUST-rule violation aborts
(:class:`SecAggAborted`) and erases every secret of the round.

Masking off the critical path (protocols/secagg.md §6.5): the input ``x`` may be given after the key
stages (``provide_input``), and with an ``executor`` the client expands
``M = PRG(b_i) + Σ_{j ∈ N(i) ∩ U1} σ(i,j)·PRG(s_ij)`` on the caller's threads as soon as its ShareKeys
is sent. At ForwardedShares only the pairs of U1 neighbours missing from U2 are taken back out and
``y = x + M`` remains — the same ring vector as expanding after the fact.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Mapping
from concurrent.futures import Executor, Future, wait

import numpy as np

from securefed.primitives import shamir
from securefed.primitives.aead import DecryptionFailed, associated_data, open_, seal
from securefed.primitives.kdf import u32
from securefed.primitives.keys import IdentityKey, X25519KeyPair, validate_x25519_public, verify_signature
from securefed.secagg.roster import Roster
from securefed.primitives.prg import accumulate_masks, submit_accumulate
from securefed.primitives.spans import for_spans
from securefed.primitives.rng import DeterministicEntropy, Entropy
from securefed.secagg import common as cm
from securefed.secagg.config import SecAggConfig
from securefed.secagg.errors import IdentityInUse, MessageError, SecAggAborted, UnexpectedMessage
from securefed.secagg.messages import (KIND_B, KIND_S, AdvertiseKeys, ConsistencySignature, ForwardedShares, KeyRoster,
                                       MaskedBuffer, MaskedInput, RoundStart, ShareKeys, SurvivorList, UnmaskRequest, UnmaskShares,
                                       decode, encode)

__all__ = ["ClientStage", "CLIENT_TRANSITIONS", "SecAggClient"]


class ClientStage(enum.Enum):
    AWAIT_ROUND_START = "await_round_start"
    AWAIT_KEYS = "await_keys"
    AWAIT_SHARES = "await_shares"
    AWAIT_SURVIVORS = "await_survivors"
    AWAIT_UNMASK = "await_unmask"
    DONE = "done"
    ABORTED = "aborted"


# stage -> (accepted message type, next stage); DONE and ABORTED accept nothing (§6).
CLIENT_TRANSITIONS: Mapping[ClientStage, tuple[type, ClientStage]] = {
    ClientStage.AWAIT_ROUND_START: (RoundStart, ClientStage.AWAIT_KEYS),
    ClientStage.AWAIT_KEYS: (KeyRoster, ClientStage.AWAIT_SHARES),
    ClientStage.AWAIT_SHARES: (ForwardedShares, ClientStage.AWAIT_SURVIVORS),
    ClientStage.AWAIT_SURVIVORS: (SurvivorList, ClientStage.AWAIT_UNMASK),
    ClientStage.AWAIT_UNMASK: (UnmaskRequest, ClientStage.DONE),
}


class _PreMask:
    """M (P ring words) being expanded on the caller's executor (§6.5); secret until erased."""

    def __init__(self, out: MaskedBuffer, futures: list[Future], keyed: frozenset[int]) -> None:
        self.out, self.buf = out, out.vector       # M is expanded where the masked input will be sent from
        self.futures, self.keyed = futures, keyed  # keyed: the neighbours whose pair is in M

    def result(self) -> np.ndarray:
        for f in self.futures:
            f.result()
        return self.buf

    def erase(self) -> None:
        """C10: stop what has not started, wait for what runs (it writes into buf), then zero buf."""
        for f in self.futures:
            f.cancel()
        wait(self.futures)
        self.buf.fill(0)
        self.out, self.buf, self.futures = None, None, []


class SecAggClient:
    """One data holder in one round. ``vector``: its quantized input, shape (P,), dtype of the ring —
    or None and ``length`` = P, the input then given by ``provide_input`` before ForwardedShares.
    ``executor``: threads for expanding the masks while the input is still being computed (§6.5)."""

    def __init__(self, client_id: int, *, identity: IdentityKey, roster: Roster, config: SecAggConfig,
                 session_context: bytes, round_index: int, vector: np.ndarray | None, entropy: Entropy,
                 length: int | None = None, executor: Executor | None = None) -> None:
        if not isinstance(identity, IdentityKey):
            raise TypeError("identity must be an IdentityKey")
        if not isinstance(roster, Roster):
            raise TypeError("roster must be a Roster")
        if not isinstance(config, SecAggConfig):
            raise TypeError("config must be a SecAggConfig")
        if not isinstance(session_context, (bytes, bytearray)):
            raise TypeError("session_context must be bytes")
        if client_id not in roster or roster.public_key(client_id) != identity.public_bytes:
            raise ValueError(f"client_id {client_id}: identity key does not match the roster")
        if executor is not None and not isinstance(executor, Executor):
            raise TypeError("executor must be a concurrent.futures.Executor")
        self.id, self._identity, self._roster, self._config = client_id, identity, roster, config
        self._ctx, self._round, self._entropy, self._executor = bytes(session_context), round_index, entropy, executor
        self._x, self._premask = None, None
        if vector is not None:
            self._check_input(vector)
            self._length = vector.shape[0]
        elif isinstance(length, bool) or not isinstance(length, int) or length < 1:
            raise ValueError("without a vector, length must be a positive int")
        else:
            self._length = length
        if vector is not None and length is not None and length != self._length:
            raise ValueError("length differs from the vector's")
        self._x = vector
        self.stage = ClientStage.AWAIT_ROUND_START
        self.revealed: dict[int, int] = {}

    def _check_input(self, vector: np.ndarray) -> None:
        ring = cm.RingSpec(self._config.ring_bits)
        if not isinstance(vector, np.ndarray) or vector.ndim != 1 or vector.dtype != ring.dtype:
            raise TypeError(f"vector must be a 1-D array of dtype {ring.dtype}")
        if ring.bits not in (16, 32) and np.any(vector >> ring.dtype.type(ring.bits)):
            raise ValueError(f"vector has elements outside Z_2^{ring.bits}")

    def provide_input(self, vector: np.ndarray) -> None:
        """The input x, once, before ForwardedShares (§6.5): TypeError/ValueError if it is not a ring
        vector of length P; ValueError if it was given already or the masked input was sent or aborted."""
        if self._x is not None or self.stage not in (ClientStage.AWAIT_ROUND_START, ClientStage.AWAIT_KEYS,
                                                     ClientStage.AWAIT_SHARES):
            raise ValueError(f"client {self.id}: no input is accepted in stage {self.stage.value} (given once, "
                             "before the masked input)")
        self._check_input(vector)
        if vector.shape[0] != self._length:
            raise ValueError(f"vector has {vector.shape[0]} elements, the round has P = {self._length}")
        self._x = vector

    @property
    def has_input(self) -> bool:
        return self._x is not None

    def close(self) -> None:
        """End the round here (the application stops, e.g. the holder refused the plan or the round is
        over): every secret, the input and the mask buffer are erased (C10); no message is accepted."""
        if self.stage is not ClientStage.DONE:
            self.stage = ClientStage.ABORTED
        self._erase()

    # -- dispatch ---------------------------------------------------------------------------
    def handle(self, data: bytes) -> bytes | memoryview:
        """Process one serialized server message; return the serialized reply (the MaskedInput as a
        read-only view of the buffer its words were formed in, messages.MaskedBuffer)."""
        if self.stage not in CLIENT_TRANSITIONS:
            raise UnexpectedMessage(f"client {self.id}: no message is accepted in stage {self.stage.value}")
        try:
            msg = decode(data)
        except MessageError as e:
            raise UnexpectedMessage(f"client {self.id}: malformed server message: {e}") from None
        expected, nxt = CLIENT_TRANSITIONS[self.stage]
        if not isinstance(msg, expected):
            raise UnexpectedMessage(f"client {self.id}: {type(msg).__name__} not accepted in stage {self.stage.value}")
        handler = getattr(self, "_on_" + type(msg).__name__)
        try:
            reply = handler(msg)
        except SecAggAborted:
            self._erase()
            self.stage = ClientStage.ABORTED
            raise
        self.stage = nxt
        if nxt is ClientStage.DONE:
            self._erase()
        return encode(reply)

    def _abort(self, why: str) -> None:
        raise SecAggAborted(f"client {self.id} aborted: {why}")

    def _erase(self) -> None:  # C10: drop every secret of the round, the mask buffer zeroed first
        if getattr(self, "_premask", None) is not None:
            self._premask.erase()
        for name in ("_c", "_s", "_b", "_held", "_x", "_rng", "_premask"):
            setattr(self, name, None)

    # -- stages -----------------------------------------------------------------------------
    def _on_RoundStart(self, m: RoundStart) -> AdvertiseKeys:  # C1
        if not hmac.compare_digest(m.context, self._ctx):
            self._abort("session context (global-model hash) differs from ours")
        if m.round_index != self._round:
            self._abort(f"round {m.round_index} is not the expected round {self._round}")
        if m.ring_bits != self._config.ring_bits or m.length != self._length:
            self._abort("ring bits or vector length differ from ours")
        if self.id not in m.cohort or any(j not in self._roster for j in m.cohort):
            self._abort("cohort does not contain us or names holders outside the roster")
        try:
            th = self._config.thresholds(len(m.cohort))
        except ValueError:
            self._abort("cohort is too small for secure aggregation")
        if (m.threshold, m.min_survivors, m.degree) != (th.threshold, th.min_survivors, th.degree):
            self._abort("thresholds or graph degree differ from our configuration")
        self._start, self._phash = m, cm.params_hash(m)
        self._graph = cm.graph_for(m, self._phash)
        # §3.2 client-secrets: every secret of this round comes from a hedged, session-bound DRBG
        seed = cm.hedged_seed(self._entropy.random_bytes(32), self._identity.sign(cm.hedge_message(self._phash)),
                              phash=self._phash, round_index=self._round, holder=self.id)
        self._rng = DeterministicEntropy(seed)
        self._c = X25519KeyPair.generate(self._rng)
        self._s = X25519KeyPair.generate(self._rng)
        self._b = self._rng.random_bytes(32)
        commit = cm.commitment(self._phash, self.id, self._b)
        sig = self._identity.sign(cm.advert_message(self._phash, self.id, self._c.public, self._s.public, commit))
        self._advert = AdvertiseKeys(self.id, self._c.public, self._s.public, commit, sig)
        return self._advert

    def _on_KeyRoster(self, m: KeyRoster) -> ShareKeys:  # C2
        cohort = set(self._start.cohort)
        keys = []
        for a in m.adverts:
            if a.sender not in cohort:
                self._abort(f"advertisement from {a.sender}, outside the cohort")
            msg = cm.advert_message(self._phash, a.sender, a.c_public, a.s_public, a.commitment)
            if not verify_signature(self._roster.public_key(a.sender), a.signature, msg):
                self._abort(f"advertisement of {a.sender} does not verify (substituted key, replay or other model)")
            if a.sender == self.id and a != self._advert:
                # signed with our own key for this round's params_hash, yet not ours: no coordinator can forge it
                raise IdentityInUse(f"client {self.id} aborted: the key roster holds an advertisement signed with "
                                    "this holder's own identity key that it did not send: another process is taking "
                                    f"part as holder {self.id}")
            keys += [a.c_public, a.s_public]
        if self._advert not in m.adverts:
            self._abort("our own advertisement was not echoed")
        if len(set(keys)) != len(keys):
            self._abort("duplicate public keys")
        try:
            for k in keys:
                validate_x25519_public(k)
        except ValueError:
            self._abort("low-order public key")
        if len(m.adverts) < self._start.min_survivors:
            self._abort(f"only {len(m.adverts)} holders advertised keys, fewer than t_min")
        self._peers = {a.sender: a for a in m.adverts}
        self._sid = cm.session_id(self._phash, m.adverts)
        xs = sorted(self._graph.holders(self.id) & self._peers.keys())
        t = self._start.threshold
        if len(xs) < t:
            self._abort("fewer than t of our share holders advertised keys")
        b_sh = shamir.split(self._b, threshold=t, xs=xs, entropy=self._rng)
        s_sh = shamir.split(self._s.private_bytes(), threshold=t, xs=xs, entropy=self._rng)
        self._held = {self.id: (b_sh[self.id], s_sh[self.id])}
        self._rng = None  # every secret of the round is drawn: the DRBG state goes (C10)
        out = []
        for j in xs:
            if j == self.id:
                continue
            key = cm.share_key(self._c.shared(self._peers[j].c_public), sid=self._sid, round_index=self._round, sender=self.id, receiver=j)
            pt = u32(self.id) + u32(j) + shamir.share_to_bytes(b_sh[j]) + shamir.share_to_bytes(s_sh[j])
            aad = associated_data(cm.LABEL, session_id=self._sid, round_index=self._round, sender=self.id, receiver=j)
            out.append((j, seal(key, pt, aad)))
        if self._executor is not None:   # §6.5: expand M for every advertised neighbour while x is computed
            keyed = frozenset(self._graph.neighbours(self.id) & self._peers.keys())
            frame = MaskedBuffer(self._length, self._config.ring_bits)  # (P,) ring words, zero, preallocated
            futures = submit_accumulate(frame.vector, self._mask_keys(keyed), cm.ring_of(self._start),
                                        chunk_elements=self._config.chunk_elements, executor=self._executor)
            self._premask = _PreMask(frame, futures, keyed)
        return ShareKeys(self.id, tuple(out))

    def _mask_keys(self, neighbours, *, self_mask: bool = True, sign: int = 1) -> list[tuple[bytes, int]]:
        """(key, sign) of PRG(b_i) and of σ(i,j)·PRG(s_ij) for each j in ``neighbours`` (§3.2, §6.4)."""
        keys = [(cm.self_mask_key(self._b, sid=self._sid, round_index=self._round, i=self.id), sign)] if self_mask else []
        for j in sorted(neighbours):
            shared = self._s.shared(self._peers[j].s_public)
            keys.append((cm.pairwise_key(shared, sid=self._sid, round_index=self._round, i=self.id, j=j),
                         sign * cm.sigma(self.id, j)))
        return keys

    def _on_ForwardedShares(self, m: ForwardedShares) -> MaskedInput:  # C3, C4, §6.5
        if self._x is None:   # checked before anything changes: the stage stays, the input may still come
            raise UnexpectedMessage(f"client {self.id}: ForwardedShares before its input was given")
        nbrs = self._graph.neighbours(self.id)
        senders = [j for j, _ in m.ciphertexts]
        if any(j not in nbrs or j not in self._peers for j in senders):
            self._abort("shares forwarded from a holder that is not an advertised neighbour")
        if len(senders) + 1 < self._start.threshold:
            self._abort("fewer than t of our share holders sent shares")
        for j, ct in m.ciphertexts:
            key = cm.share_key(self._c.shared(self._peers[j].c_public), sid=self._sid, round_index=self._round, sender=j, receiver=self.id)
            aad = associated_data(cm.LABEL, session_id=self._sid, round_index=self._round, sender=j, receiver=self.id)
            try:
                pt = open_(key, ct, aad)
            except DecryptionFailed:
                continue  # C3: we simply do not hold j's shares
            if pt[:8] == u32(j) + u32(self.id):
                try:
                    self._held[j] = (shamir.share_from_bytes(pt[8:74]), shamir.share_from_bytes(pt[74:140]))
                except ValueError:
                    pass
        self._u2_view = frozenset(senders)
        ring, chunk = cm.ring_of(self._start), self._config.chunk_elements
        x = self._x
        if self._premask is None:
            out = MaskedBuffer(self._length, ring.bits)
            y = out.vector                                      # (P,) ring elements, sent from where they lie
            for_spans(y.shape[0], lambda lo, hi: np.copyto(y[lo:hi], x[lo:hi]))   # x is in Z_2^k (checked)
            accumulate_masks(y, self._mask_keys(self._u2_view), ring, chunk_elements=chunk, executor=self._executor)
        else:   # §6.5: y = x + M − Σ_{j ∈ keyed \ U2} σ(i,j)·PRG(s_ij)  (mod 2^k); C3 made U2 ⊆ keyed
            pre, self._premask = self._premask, None
            out = pre.out
            try:
                y = pre.result()                                # (P,) M, wrapping sums of the streams
                gone = pre.keyed - self._u2_view
                if gone:                                        # only on dropouts between SHARES and MASKED
                    accumulate_masks(y, self._mask_keys(gone, self_mask=False, sign=-1), ring, chunk_elements=chunk,
                                     executor=self._executor)

                def add_x(lo: int, hi: int) -> None:            # x is already in Z_2^k (checked when given)
                    seg = y[lo:hi]
                    np.add(seg, x[lo:hi], out=seg)
                    ring.reduce(seg)
                for_spans(y.shape[0], add_x)                    # across the cores: the same words
            except BaseException:
                pre.erase()       # C10 on the failure path too: _erase no longer sees this buffer
                raise
        self._x = None  # C4: the plain input is not needed any more
        return MaskedInput(self.id, ring.bits, y, buffer=out)

    def _on_SurvivorList(self, m: SurvivorList) -> ConsistencySignature:  # C5
        u3 = m.survivors
        if any(j not in self._peers for j in u3) or self.id not in u3:
            self._abort("survivor list names unknown holders or omits us")
        if len(u3) < self._start.min_survivors:
            self._abort(f"only {len(u3)} survivors, fewer than t_min")
        self._signed_u3 = u3
        return ConsistencySignature(self.id, self._identity.sign(cm.consistency_message(self._sid, u3)))

    def _on_UnmaskRequest(self, m: UnmaskRequest) -> UnmaskShares:  # C6–C9
        alive, dropped = set(m.alive), set(m.dropped)
        if m.alive != self._signed_u3:
            self._abort("alive list differs from the survivor list we signed")
        if self.id in dropped:
            self._abort("we are listed as dropped")
        if alive & dropped:
            self._abort("a holder is listed as both alive and dropped")
        if any(j not in self._peers for j in dropped):
            self._abort("dropped list names holders that never advertised keys")
        signed = self._signed_u3
        msg = cm.consistency_message(self._sid, signed)
        for j, sig in m.signatures:
            if j not in alive or not verify_signature(self._roster.public_key(j), sig, msg):
                self._abort("invalid consistency signature")
        if len(m.signatures) < self._start.min_survivors:
            self._abort("fewer than t_min consistency signatures")
        nbrs = self._graph.neighbours(self.id)
        if not (alive & nbrs) <= self._u2_view:
            self._abort("a survivor's shares were never forwarded to us")
        out = []
        for j in sorted(self._graph.holders(self.id) & self._held.keys()):
            kind = KIND_B if j in alive else KIND_S if (j in dropped and j in self._u2_view) else None
            if kind is None:
                continue
            if self.revealed.get(j, kind) != kind:  # C9 (unreachable after C7; kept as the last line of defence)
                self._abort(f"refusing to reveal both shares of {j}")
            self.revealed[j] = kind
            out.append((j, kind, shamir.share_to_bytes(self._held[j][kind])))
        return UnmaskShares(self.id, tuple(out))
