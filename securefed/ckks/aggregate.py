"""Keyring (holder-side key state, rotation) and the in-process CKKS round driver (protocols/ckks.md §3, §5).

``CkksKeyring`` simulates every holder's side in one process: each holder's long-term keys and its
copy of the CKKS secret context live in its own :class:`HolderRole`; the server role
(:class:`CkksServer`) is a separate object that only ever gets public contexts and ciphertexts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import numpy as np

from securefed.ckks.holder import HolderRole, expected_leader
from securefed.ckks.keyshare import HolderPublic, HolderSecrets, KeyShareError
from securefed.ckks.messages import AggregateMsg, KeyShareMsg, decode, encode
from securefed.ckks.routing import RoutingPolicy
from securefed.ckks.server import CkksServer, UploadRejected
from securefed.primitives.keys import IdentityKey
from securefed.primitives.rng import Entropy, SystemEntropy

__all__ = ["CkksOutcome", "CkksKeyring", "setup_keyring", "make_keyring", "run_ckks_round"]


@dataclass(frozen=True)
class CkksOutcome:
    total: np.ndarray  # float64 decrypted sum of the survivors' vectors (as released by the decryptor)
    survivors: frozenset[int]
    rejected: frozenset[int]  # holders whose uploads failed validation (or who had no key)
    bytes_up: int
    bytes_down: int


class CkksKeyring:
    """Holder-side key state of a federation: who holds which key generation; rotation (§3.4)."""

    def __init__(self, policy: RoutingPolicy, identities: Mapping[int, HolderSecrets]) -> None:
        if not isinstance(policy, RoutingPolicy):
            raise TypeError("policy must be a RoutingPolicy")
        self.policy = policy
        self.generation = 0
        self.key_holders: frozenset[int] = frozenset()
        self.epoch: int | None = None
        self.key_id: str | None = None
        self._pubctx: bytes | None = None  # signed PublicContextMsg of the current generation (public)
        self._holders: dict[int, HolderRole] = {}
        self.update_roster(identities)

    def update_roster(self, identities: Mapping[int, HolderSecrets]) -> None:
        """Replace the roster; any change of membership forces a new key at the next round (§3.4)."""
        if not identities or not all(isinstance(s, HolderSecrets) and s.holder_id == i for i, s in identities.items()):
            raise TypeError("identities must map holder id -> HolderSecrets with the same id")
        new = {i: s.public() for i, s in identities.items()}
        if new != self.roster:  # membership or identity keys changed
            for role in self._holders.values():
                role.forget_key()
            self.key_holders, self.key_id, self._pubctx = frozenset(), None, None
            self._holders = {i: HolderRole(s, self.policy) for i, s in identities.items()}

    @property
    def roster(self) -> dict[int, HolderPublic]:
        return {i: r.secrets.public() for i, r in self._holders.items()}

    def holder(self, holder_id: int) -> HolderRole:
        return self._holders[holder_id]

    def key_holders_for(self, cohort: frozenset[int]) -> frozenset[int]:
        if not cohort <= self._holders.keys():
            raise ValueError(f"cohort: holders {sorted(cohort - self._holders.keys())} are not in the roster")
        return cohort if self.policy.key_scope == "cohort" else frozenset(self._holders)

    def needs_rotation(self, round_index: int, cohort: frozenset[int]) -> bool:
        epoch = round_index // self.policy.rotate_key_every_rounds
        return self.key_id is None or epoch != self.epoch or self.key_holders_for(cohort) != self.key_holders

    def rotate(self, round_index: int, cohort: frozenset[int], server: CkksServer,
               entropy_for: Callable[[int], Entropy]) -> tuple[int, int]:
        """New key generation: the leader makes keys, the server gets the public context and relays
        the sealed shares; returns (bytes up, bytes down)."""
        holders = self.key_holders_for(cohort)
        generation = max(self.generation, server.generation) + 1
        leader = expected_leader(holders, generation)
        for i, role in self._holders.items():
            if i not in holders:
                role.forget_key()  # former key holders delete their copy
        roster = self.roster
        up = down = 0
        adverts: dict[int, bytes] = {}
        for i in sorted(holders):  # §3.2 step 1: fresh signed X25519 keys, relayed by the server
            wire = encode(self._holders[i].advertise(generation=generation, round_index=round_index, entropy=entropy_for(i)))
            up += len(wire)
            adverts[i] = server.relay(wire)
        # the server forwards the others' adverts to the leader and the leader's advert to the others
        down += sum(len(a) for i, a in adverts.items() if i != leader) + len(adverts[leader]) * (len(holders) - 1)
        leader_advert = decode(adverts[leader])
        pub_msg, shares, _refused = self._holders[leader].make_keys(
            generation=generation, round_index=round_index, roster=roster,
            adverts=[decode(a) for i, a in adverts.items() if i != leader])
        self._pubctx = encode(pub_msg)
        server.receive_public_context(self._pubctx, key_holders=holders)
        up += len(self._pubctx)
        for share in shares:  # §3.2 step 2: sealed secret contexts, relayed by the server
            wire = encode(share)
            up += len(wire)
            relayed = server.relay(wire)
            down += len(relayed)
            msg = decode(relayed)
            if not isinstance(msg, KeyShareMsg):
                raise ValueError("relay returned a non-key-share")
            try:
                self._holders[msg.receiver].accept_share(msg, leader_advert=leader_advert, leader=roster[leader],
                                                         generation=generation)
            except (KeyShareError, ValueError):
                self._holders[msg.receiver].forget_key()  # that holder cannot take part this generation
        for i in holders - {leader} - {s.receiver for s in shares}:
            self._holders[i].forget_key()  # refused advert: no share, no key
        self.generation, self.key_holders, self.key_id = generation, holders, self._holders[leader].key_id
        self.epoch = round_index // self.policy.rotate_key_every_rounds
        return up, down

    def publish_to(self, server: CkksServer) -> int:
        """Re-send the current (signed, public) context to a server that lacks it; bytes up."""
        if self._pubctx is None:
            raise ValueError("no key generation to publish")
        server.receive_public_context(self._pubctx, key_holders=self.key_holders)
        return len(self._pubctx)


def setup_keyring(
    holder_ids: Iterable[int], *, policy: RoutingPolicy, entropy_for: Callable[[int], Entropy],
    identities: Mapping[int, HolderSecrets | IdentityKey] | None = None,
) -> CkksKeyring:
    """Keyring for a roster. ``identities`` are the holders' long-term Ed25519 identity keys (the
    roster keys, ``securefed.primitives.keys.IdentityKey``); when absent (simulation) each holder
    draws its own from ``entropy_for(holder_id)``. X25519 keys are fresh per generation (§3.2)."""
    ids = sorted(set(holder_ids))
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in ids):
        raise ValueError("holder_ids must be non-negative ints, at least one")
    if identities is None:
        identities = {i: HolderSecrets.generate(i, entropy_for(i)) for i in ids}
    elif set(identities) != set(ids):
        raise ValueError("identities must cover exactly holder_ids")
    else:
        identities = {i: k if isinstance(k, HolderSecrets) else HolderSecrets(i, k) for i, k in identities.items()}
    return CkksKeyring(policy, identities)


def make_keyring(
    holder_ids: Iterable[int], *, policy: RoutingPolicy, identities: Mapping[int, HolderSecrets | IdentityKey] | None = None,
    entropy_for: Callable[[int], Entropy] | None = None,
) -> CkksKeyring:
    """:func:`setup_keyring` with optional entropy: without ``identities`` or ``entropy_for``,
    identities are drawn from the OS (``SystemEntropy``). Pass the roster's ``IdentityKey``s."""
    return setup_keyring(holder_ids, policy=policy, identities=identities,
                         entropy_for=entropy_for or (lambda _h: SystemEntropy()))


def run_ckks_round(
    inputs: Mapping[int, np.ndarray], *, policy: RoutingPolicy, round_index: int, keyring: CkksKeyring,
    entropy_for: Callable[[int], Entropy], tamper: Mapping[int, Callable[[bytes], bytes]] | None = None,
    server: CkksServer | None = None,
) -> CkksOutcome:
    """One CKKS round over the cohort ``inputs.keys()`` (protocols/ckks.md §5).

    ``inputs[h]`` is holder h's packed CKKS slice (RoutePlan.split), already clipped/noised.
    ``entropy_for(h)`` is called at most once per holder per call and MUST return a stream that
    never repeats across calls (SystemEntropy, or DeterministicEntropy seeded per run, round, holder).
    ``tamper[h]`` rewrites h's upload bytes in transit (tests, audits). ``server`` may be kept
    across rounds; a fresh one per round (default) gets the public context re-sent. With no
    valid upload, ``total`` is zeros and ``survivors`` empty.
    """
    if policy != keyring.policy:
        raise ValueError("policy must equal the keyring's policy")
    if not policy.enabled:
        raise ValueError("policy: CKKS routing is disabled (enabled=false)")
    if isinstance(round_index, bool) or not isinstance(round_index, int) or round_index < 0:
        raise ValueError("round_index must be a non-negative int")
    if not inputs:
        raise ValueError("inputs must not be empty")
    lengths = {np.asarray(v).shape for v in inputs.values()}
    if len(lengths) != 1 or len(next(iter(lengths))) != 1:
        raise ValueError("inputs must all be 1-D vectors of one length")
    length = next(iter(lengths))[0]
    cohort = frozenset(inputs)
    streams: dict[int, Entropy] = {}

    def stream(h: int) -> Entropy:  # one entropy_for(h) call per holder per round, used sequentially
        if h not in streams:
            streams[h] = entropy_for(h)
        return streams[h]

    server = server if server is not None else CkksServer(policy, keyring.roster)
    up = down = 0
    if keyring.needs_rotation(round_index, cohort):
        u, d = keyring.rotate(round_index, cohort, server, stream)
        up, down = up + u, down + d
    elif server.key_id != keyring.key_id:
        up += keyring.publish_to(server)
    server.begin_round(round_index, cohort, length)
    rejected: set[int] = set()
    for h in sorted(cohort):
        role = keyring.holder(h)
        if not role.has_key:
            rejected.add(h)
            continue
        wire = encode(role.encrypt(round_index, inputs[h], cohort=cohort))
        if tamper and h in tamper:
            wire = tamper[h](wire)
        up += len(wire)
        try:
            server.receive_upload(h, wire)
        except UploadRejected:
            rejected.add(h)
    if not server.survivors:
        return CkksOutcome(np.zeros(length), frozenset(), frozenset(rejected), up, down)
    agg = server.aggregate()
    decryptor = min(cohort)  # §5.3 D5: the cohort's smallest member decrypts and releases, exactly once
    down += len(agg)
    msg = decode(agg)
    if not isinstance(msg, AggregateMsg):
        raise ValueError("server returned a non-aggregate")
    total = keyring.holder(decryptor).decrypt(msg, length=length, cohort=cohort, roster=keyring.roster,
                                              entropy=stream(decryptor))
    up += total.nbytes  # the released float64 sum goes back to the aggregator
    return CkksOutcome(total, frozenset(server.survivors), frozenset(rejected), up, down)
