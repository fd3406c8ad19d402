"""Holder-side state machine (protocols/secagg.md §5.2, §6, MUST rules C1–C10).

``SecAggClient.handle(bytes) -> bytes`` takes one serialized server message and returns the
serialized reply; transport-agnostic. A message the current stage does not accept raises
:class:`UnexpectedMessage` and leaves the state unchanged; a MUST-rule violation aborts
(:class:`SecAggAborted`) and erases every secret of the round.
"""

from __future__ import annotations

import enum
import hmac
from collections.abc import Mapping

import numpy as np

from securefed.primitives import shamir
from securefed.primitives.aead import DecryptionFailed, associated_data, open_, seal
from securefed.primitives.kdf import u32
from securefed.primitives.keys import IdentityKey, X25519KeyPair, validate_x25519_public, verify_signature
from securefed.secagg.roster import Roster
from securefed.primitives.prg import accumulate_masks
from securefed.primitives.rng import DeterministicEntropy, Entropy
from securefed.secagg import common as cm
from securefed.secagg.config import SecAggConfig
from securefed.secagg.errors import MessageError, SecAggAborted, UnexpectedMessage
from securefed.secagg.messages import (KIND_B, KIND_S, AdvertiseKeys, ConsistencySignature, ForwardedShares, KeyRoster,
                                       MaskedInput, RoundStart, ShareKeys, SurvivorList, UnmaskRequest, UnmaskShares,
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


class SecAggClient:
    """One data holder in one round. ``vector``: its quantized input, shape (P,), dtype of the ring."""

    def __init__(self, client_id: int, *, identity: IdentityKey, roster: Roster, config: SecAggConfig,
                 session_context: bytes, round_index: int, vector: np.ndarray, entropy: Entropy) -> None:
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
        ring = cm.RingSpec(config.ring_bits)
        if not isinstance(vector, np.ndarray) or vector.ndim != 1 or vector.dtype != ring.dtype:
            raise TypeError(f"vector must be a 1-D array of dtype {ring.dtype}")
        if ring.bits not in (16, 32) and np.any(vector >> ring.dtype.type(ring.bits)):
            raise ValueError(f"vector has elements outside Z_2^{ring.bits}")
        self.id, self._identity, self._roster, self._config = client_id, identity, roster, config
        self._ctx, self._round, self._x, self._entropy = bytes(session_context), round_index, vector, entropy
        self.stage = ClientStage.AWAIT_ROUND_START
        self.revealed: dict[int, int] = {}

    # -- dispatch ---------------------------------------------------------------------------
    def handle(self, data: bytes) -> bytes:
        """Process one serialized server message; return the serialized reply."""
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

    def _erase(self) -> None:  # C10: drop every secret of the round
        for name in ("_c", "_s", "_b", "_held", "_x", "_rng"):
            setattr(self, name, None)

    # -- stages -----------------------------------------------------------------------------
    def _on_RoundStart(self, m: RoundStart) -> AdvertiseKeys:  # C1
        if not hmac.compare_digest(m.context, self._ctx):
            self._abort("session context (global-model hash) differs from ours")
        if m.round_index != self._round:
            self._abort(f"round {m.round_index} is not the expected round {self._round}")
        if m.ring_bits != self._config.ring_bits or m.length != self._x.shape[0]:
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
        return ShareKeys(self.id, tuple(out))

    def _on_ForwardedShares(self, m: ForwardedShares) -> MaskedInput:  # C3, C4
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
        ring = cm.ring_of(self._start)
        keys = [(cm.self_mask_key(self._b, sid=self._sid, round_index=self._round, i=self.id), 1)]
        for j in sorted(self._u2_view):
            shared = self._s.shared(self._peers[j].s_public)
            keys.append((cm.pairwise_key(shared, sid=self._sid, round_index=self._round, i=self.id, j=j), cm.sigma(self.id, j)))
        y = np.array(self._x, dtype=ring.dtype, copy=True)  # (P,) ring elements
        ring.reduce(y)
        accumulate_masks(y, keys, ring, chunk_elements=self._config.chunk_elements)
        self._x = None  # C4: the plain input is not needed any more
        return MaskedInput(self.id, ring.bits, y)

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
