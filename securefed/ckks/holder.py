"""Holder role: key generation (leader), key-share receipt, encryption, decryption (protocols/ckks.md §3, §5).

A holder keeps its CKKS secret context in memory only; this module never writes it anywhere and
only ever serialises it into :func:`keyshare.seal_share`.
"""

from __future__ import annotations

import hashlib
import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import tenseal as ts

from securefed.ckks import keys
from securefed.ckks.keyshare import (
    LABELS, HolderPublic, HolderSecrets, KeyShareError, advert_statement, label, open_share, seal_share, verify,
)
from securefed.ckks.messages import AggregateMsg, KeyAdvertMsg, KeyShareMsg, PublicContextMsg, UploadMsg, decode
from securefed.ckks.routing import RoutingPolicy
from securefed.primitives.keys import X25519KeyPair, validate_x25519_public
from securefed.primitives.rng import Entropy, uniform_float64

__all__ = ["HolderRole", "expected_leader", "upload_statement", "pubctx_statement", "check_advert", "check_ciphertext"]


def expected_leader(key_holders: frozenset[int], generation: int) -> int:
    """§3.1: the leader of key generation g is sorted(key holders)[g mod |key holders|]."""
    if not key_holders:
        raise ValueError("key_holders must not be empty")
    return sorted(key_holders)[generation % len(key_holders)]


def pubctx_statement(generation: int, round_index: int, leader: int, key_id: str) -> bytes:
    return label(LABELS["pubctx_sig"], generation=generation, round=round_index, leader=leader, key_id=key_id)


def upload_statement(round_index: int, generation: int, holder: int, key_id: str, cts: Sequence[bytes],
                     cohort: Iterable[int]) -> bytes:
    """What a holder signs for its upload (§5.1): the round, the key, its ciphertexts and the cohort it was
    asked to upload for — so one sum can only hold uploads made for one cohort (§5.3 D5, audit SEC-15)."""
    h = hashlib.sha256()
    for c in cts:  # length-prefixed so that splitting points are bound too
        h.update(len(c).to_bytes(8, "big") + c)
    members = ",".join(str(int(i)) for i in sorted(set(cohort)))
    return label(LABELS["upload_sig"], round=round_index, generation=generation, holder=holder,
                 key_id=key_id, ciphertexts=h.hexdigest(), cohort=members)


def check_advert(adv: KeyAdvertMsg, roster: Mapping[int, HolderPublic], generation: int) -> bytes:
    """The advertised X25519 public key, after checking generation, roster signature and order (§3.2)."""
    if adv.generation != generation or adv.holder not in roster:
        raise KeyShareError(f"key advert of holder {adv.holder}: wrong generation or not on the roster")
    if not verify(roster[adv.holder], adv.signature, advert_statement(generation, adv.round_index, adv.holder, adv.x25519)):
        raise KeyShareError(f"key advert of holder {adv.holder}: failed authentication")
    try:
        return validate_x25519_public(adv.x25519)
    except (TypeError, ValueError):
        raise KeyShareError(f"key advert of holder {adv.holder}: invalid X25519 key") from None


def check_ciphertext(blob: bytes, ctx: ts.Context, policy: RoutingPolicy, length: int, what: str) -> ts.CKKSVector:
    """Deserialise ``blob`` under ``ctx`` and check it is a fresh ciphertext of ``length`` slots (§5.2)."""
    try:
        vec = ts.ckks_vector_from(ctx, blob)
        cts = vec.data.ciphertext()
    except Exception:
        raise ValueError(f"{what}: not a valid CKKS vector under this context") from None
    if len(cts) != 1:
        raise ValueError(f"{what}: holds {len(cts)} SEAL ciphertexts, expected 1")
    c = cts[0]
    if c.size() != 2 or not c.is_ntt_form():
        raise ValueError(f"{what}: has {c.size()} polynomials, expected a fresh ciphertext of 2")
    if tuple(c.parms_id()) != keys.expected_first_parms_id(policy):
        raise ValueError(f"{what}: wrong parameters or modulus level")
    if c.scale != float(2**policy.scale_bits):
        raise ValueError(f"{what}: scale {c.scale} != 2^{policy.scale_bits}")
    if vec.size() != length:
        raise ValueError(f"{what}: encodes {vec.size()} values, expected {length}")
    return vec


def chunk_lengths(length: int, slots: int) -> list[int]:
    return [min(slots, length - s) for s in range(0, length, slots)]


def gaussian(entropy: Entropy, n: int) -> np.ndarray:
    """n standard normals by Box-Muller from ``entropy`` (used for noise flooding, §4.3)."""
    m = (n + 1) // 2
    u1, u2 = uniform_float64(entropy, m), uniform_float64(entropy, m)
    r = np.sqrt(-2.0 * np.log1p(-u1))  # 1 - u1 in (0, 1]: log is finite
    return np.concatenate([r * np.cos(2 * math.pi * u2), r * np.sin(2 * math.pi * u2)])[:n]


class HolderRole:
    def __init__(self, secrets: HolderSecrets, policy: RoutingPolicy) -> None:
        if not isinstance(secrets, HolderSecrets):
            raise TypeError("secrets must be HolderSecrets")
        if not isinstance(policy, RoutingPolicy):
            raise TypeError("policy must be a RoutingPolicy")
        self.secrets, self.policy = secrets, policy
        self.holder_id = secrets.holder_id
        self._ctx: ts.Context | None = None
        self.generation = 0  # 0: no key yet; generations start at 1
        self.key_id: str | None = None
        self._eph: tuple[int, X25519KeyPair] | None = None  # (generation, fresh X25519 key pair)
        self._released: set[tuple[int, int]] = set()  # (generation, round) whose sum this holder decrypted

    @property
    def has_key(self) -> bool:
        return self._ctx is not None

    def forget_key(self) -> None:
        self._ctx, self.key_id, self._eph = None, None, None

    # §3.2: a fresh X25519 key for this generation, signed with the roster key
    def advertise(self, *, generation: int, round_index: int, entropy: Entropy) -> KeyAdvertMsg:
        if generation <= self.generation:
            raise ValueError("generation must increase")
        pair = X25519KeyPair.generate(entropy)
        self._eph = (generation, pair)
        sig = self.secrets.sign(advert_statement(generation, round_index, self.holder_id, pair.public))
        return KeyAdvertMsg(generation, round_index, self.holder_id, pair.public, sig)

    def _fresh_key(self, generation: int) -> X25519KeyPair:
        if self._eph is None or self._eph[0] != generation:
            raise KeyShareError(f"holder {self.holder_id} has no fresh key for generation {generation}")
        return self._eph[1]

    # §3.1 leader: fresh CKKS keys, the public context for the server, one sealed share per other
    # key holder whose advert verifies; returns (public context, shares, holders left without a share)
    def make_keys(
        self, *, generation: int, round_index: int, adverts: Sequence[KeyAdvertMsg], roster: Mapping[int, HolderPublic],
    ) -> tuple[PublicContextMsg, list[KeyShareMsg], set[int]]:
        mine = self._fresh_key(generation)
        ctx = keys.generate_secret_context(self.policy)
        pub = keys.public_context_bytes(ctx)
        key_id = keys.key_id_of(pub)
        secret = keys.secret_context_bytes(ctx)
        shares, refused = [], set()
        for adv in adverts:
            if adv.holder == self.holder_id:
                continue
            try:
                peer = check_advert(adv, roster, generation)
                blob = seal_share(sender=self.holder_id, sender_key=mine, receiver=adv.holder, receiver_public=peer,
                                  generation=generation, round_index=round_index, key_id=key_id, plaintext=secret)
            except KeyShareError:
                refused.add(adv.holder)
                continue
            shares.append(KeyShareMsg(generation, round_index, self.holder_id, adv.holder, key_id, blob))
        del secret
        self._eph = None  # forward secrecy: the fresh private key is gone once the shares are sealed
        self._ctx, self.generation, self.key_id = ctx, generation, key_id
        sig = self.secrets.sign(pubctx_statement(generation, round_index, self.holder_id, key_id))
        return PublicContextMsg(generation, round_index, self.holder_id, pub, sig), shares, refused

    # §3.2 receiver MUST rules H1-H5: addressed to me, from the leader I compute (whose signed
    # advert I check), newer generation, authentic, right parameters, public part hashes to key id
    def accept_share(self, msg: KeyShareMsg, *, leader_advert: KeyAdvertMsg, leader: HolderPublic,
                     generation: int) -> None:
        if not isinstance(msg, KeyShareMsg) or not isinstance(leader_advert, KeyAdvertMsg):
            raise TypeError("msg must be a KeyShareMsg and leader_advert a KeyAdvertMsg")
        if msg.receiver != self.holder_id:
            raise KeyShareError(f"key share addressed to holder {msg.receiver}, not {self.holder_id}")
        if msg.sender != leader.holder_id or leader_advert.holder != leader.holder_id:
            raise KeyShareError(f"key share from holder {msg.sender}, expected leader {leader.holder_id}")
        if msg.generation != generation or generation <= self.generation:
            raise KeyShareError(f"key share for generation {msg.generation}: stale or unexpected")
        leader_public = check_advert(leader_advert, {leader.holder_id: leader}, generation)
        mine = self._fresh_key(generation)
        self._eph = None  # one use only
        secret = open_share(receiver=self.holder_id, receiver_key=mine, sender=msg.sender, sender_public=leader_public,
                            generation=msg.generation, round_index=msg.round_index, key_id=msg.key_id, blob=msg.blob)
        ctx = keys.load_secret_context(secret, self.policy)
        del secret
        if keys.key_id_of(keys.public_context_bytes(ctx)) != msg.key_id:
            raise KeyShareError("key share does not match the announced key id")
        self._ctx, self.generation, self.key_id = ctx, msg.generation, msg.key_id

    # §5.1 encryption of this holder's small-tensor slice (already clipped/noised by the caller)
    def encrypt(self, round_index: int, vector: np.ndarray, *, cohort: Iterable[int]) -> UploadMsg:
        """``cohort``: the holders the server asked to upload this round (bound into the signature, §5.1)."""
        cohort = frozenset(cohort)
        if self.holder_id not in cohort:
            raise ValueError("the upload cohort must contain this holder")
        cohort_size = len(cohort)
        if self._ctx is None or self.key_id is None:
            raise ValueError(f"holder {self.holder_id} has no CKKS key for this round")
        x = np.asarray(vector)
        if x.ndim != 1 or x.size == 0 or not np.issubdtype(x.dtype, np.floating):
            raise ValueError("vector must be a non-empty 1-D float array")
        x = x.astype(np.float64)
        if not np.all(np.isfinite(x)):
            raise ValueError("vector has non-finite values")
        if float(np.max(np.abs(x))) * cohort_size > self.policy.capacity:  # §4.2 no-wrap rule
            raise ValueError(f"vector: max|x| * cohort_size exceeds CKKS capacity {self.policy.capacity:g}")
        slots = self.policy.slots
        cts = tuple(ts.ckks_vector(self._ctx, x[s:s + slots].tolist()).serialize() for s in range(0, x.size, slots))
        sig = self.secrets.sign(upload_statement(round_index, self.generation, self.holder_id, self.key_id, cts, cohort))
        return UploadMsg(round_index, self.generation, self.holder_id, self.key_id, cts, sig)

    # §5.3 decryption of the aggregate and noise flooding before release (§4.3)
    def decrypt(
        self, msg: AggregateMsg, *, length: int, cohort: frozenset[int],
        roster: Mapping[int, HolderPublic], entropy: Entropy, round_index: int | None = None,
    ) -> np.ndarray:
        """D1–D5 (protocols/ckks.md §5.3). ``cohort``: the cohort this holder itself was asked to upload
        for. D4: at most one released sum per (key generation, round), for the round the caller is in
        (``round_index``): two sums over different sets would expose their difference, and an old round's
        aggregate must not be released again. D5: only min(cohort) decrypts, and (verified mode) only
        uploads signed for that cohort — so every sum of a round is over its own, disjoint cohort."""
        if self._ctx is None:
            raise ValueError(f"holder {self.holder_id} has no CKKS key")
        if msg.generation != self.generation or msg.key_id != self.key_id:
            raise ValueError("aggregate is under another key generation")
        if round_index is not None and msg.round_index != round_index:
            raise ValueError(f"aggregate is for round {msg.round_index}, not the current round {round_index}")
        if (msg.generation, msg.round_index) in self._released:
            raise ValueError(f"a sum of round {msg.round_index} was already released under this key (D4)")
        if self.holder_id != min(cohort, default=None):   # D5: one designated decryptor per cohort
            raise ValueError(f"holder {self.holder_id} is not the decryptor of its cohort (min = {min(cohort, default=None)})")
        survivors = set(msg.survivors)
        if len(survivors) != len(msg.survivors) or not survivors <= cohort:
            raise ValueError("aggregate: survivors must be distinct members of the cohort")
        if len(survivors) < self.policy.min_survivors:  # MUST: never decrypt a (near-)individual input
            raise ValueError(f"aggregate: {len(survivors)} survivors < min_survivors={self.policy.min_survivors}")
        lens = chunk_lengths(length, self.policy.slots)
        if self.policy.verify_aggregate:
            sums = self._resum(msg, lens, roster, cohort)
        else:
            if len(msg.ciphertexts) != len(lens):
                raise ValueError(f"aggregate has {len(msg.ciphertexts)} ciphertexts, expected {len(lens)}")
            sums = [check_ciphertext(b, self._ctx, self.policy, n, f"aggregate[{i}]")
                    for i, (b, n) in enumerate(zip(msg.ciphertexts, lens))]
        self._released.add((msg.generation, msg.round_index))  # recorded before the sum leaves this holder
        total = np.concatenate([np.asarray(v.decrypt()) for v in sums]).astype(np.float64)
        if self.policy.decrypt_flood_bits > 0:
            total += gaussian(entropy, length) * 2.0 ** (self.policy.decrypt_flood_bits - self.policy.scale_bits)
        return total

    def _resum(self, msg: AggregateMsg, lens: list[int], roster: Mapping[int, HolderPublic],
               cohort: frozenset[int]) -> list[ts.CKKSVector]:
        """Verified mode: each survivor's upload is signed by it; re-add them here (§5.3)."""
        if len(msg.uploads) != len(msg.survivors):
            raise ValueError("aggregate: one signed upload per survivor is required")
        acc: list[ts.CKKSVector] | None = None
        for holder, data in zip(msg.survivors, msg.uploads):
            up = decode(data)
            if not isinstance(up, UploadMsg) or up.holder != holder or holder not in roster:
                raise ValueError(f"aggregate: upload of holder {holder} is not from that holder")
            st = upload_statement(up.round_index, up.generation, holder, up.key_id, up.ciphertexts, cohort)
            if not verify(roster[holder], up.signature, st):   # also: not an upload made for this cohort (D5)
                raise ValueError(f"aggregate: upload of holder {holder} failed authentication")
            if up.round_index != msg.round_index or up.generation != self.generation or up.key_id != self.key_id:
                raise ValueError(f"aggregate: upload of holder {holder} is for another round or key")
            if len(up.ciphertexts) != len(lens):
                raise ValueError(f"aggregate: upload of holder {holder} has the wrong ciphertext count")
            vecs = [check_ciphertext(b, self._ctx, self.policy, n, f"upload[{holder}][{i}]")
                    for i, (b, n) in enumerate(zip(up.ciphertexts, lens))]
            if acc is None:
                acc = vecs
            else:
                for a, v in zip(acc, vecs):
                    a.add_(v)
        if acc is None:
            raise ValueError("aggregate: empty")
        return acc
