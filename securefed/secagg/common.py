"""Protocol constants and derivations shared by client and server (protocols/secagg.md §3)."""

from __future__ import annotations

from securefed.primitives.graph import NeighbourGraph
from securefed.primitives.kdf import derive_key, hkdf_sha256, encode_info, labelled_hash, u32
from securefed.primitives.quantize import RingSpec
from securefed.secagg.messages import AdvertiseKeys, RoundStart, encode

__all__ = [
    "LABEL", "params_hash", "graph_for", "commitment", "advert_message", "session_id",
    "consistency_message", "pairwise_key", "self_mask_key", "share_key", "sigma", "ring_of", "hedge_message",
    "hedged_seed",
]

LABEL = "securefed/secagg/v1"


def params_hash(start: RoundStart) -> bytes:
    """§3.2: SHA-256(LABEL‖"/params"‖0x00‖encoded RoundStart)."""
    return labelled_hash(LABEL, "params", encode(start))


def graph_for(start: RoundStart, phash: bytes) -> NeighbourGraph:
    """§4: the neighbour graph over the cohort, seeded by the params hash."""
    return NeighbourGraph(start.cohort, start.degree, labelled_hash(LABEL, "graph", phash))


def ring_of(start: RoundStart) -> RingSpec:
    return RingSpec(start.ring_bits)


def commitment(phash: bytes, holder: int, b_seed: bytes) -> bytes:
    """§3.2: commit_i = SHA-256(LABEL‖"/b-commit"‖0x00‖params_hash‖u32(i)‖b_i)."""
    return labelled_hash(LABEL, "b-commit", phash, u32(holder), b_seed)


def advert_message(phash: bytes, holder: int, c_public: bytes, s_public: bytes, commit: bytes) -> bytes:
    """§3.6: the string an advertisement signature covers."""
    return LABEL.encode() + b"/advertise\x00" + phash + u32(holder) + c_public + s_public + commit


def session_id(phash: bytes, adverts: tuple[AdvertiseKeys, ...]) -> bytes:
    """§3.2: SHA-256(LABEL‖"/session"‖0x00‖params_hash‖encoded adverts of U1 in id order)."""
    return labelled_hash(LABEL, "session", phash, *(encode(a) for a in sorted(adverts, key=lambda a: a.sender)))


def consistency_message(sid: bytes, survivors: tuple[int, ...]) -> bytes:
    """§3.6: LABEL‖"/consistency"‖0x00‖session_id‖u32(|U3|)‖u32(id)…"""
    return LABEL.encode() + b"/consistency\x00" + sid + u32(len(survivors)) + b"".join(u32(i) for i in sorted(survivors))


def pairwise_key(shared: bytes, *, sid: bytes, round_index: int, i: int, j: int) -> bytes:
    """§3.2 `pairwise-mask`: key of PRG(s_ij), symmetric in (i, j)."""
    lo, hi = min(i, j), max(i, j)
    return derive_key(shared, salt=sid, label=LABEL, purpose="pairwise-mask", round_index=round_index, fields=(u32(lo), u32(hi)))


def self_mask_key(b_seed: bytes, *, sid: bytes, round_index: int, i: int) -> bytes:
    """§3.2 `self-mask`: key of PRG(b_i)."""
    return derive_key(b_seed, salt=sid, label=LABEL, purpose="self-mask", round_index=round_index, fields=(u32(i),))


def share_key(shared: bytes, *, sid: bytes, round_index: int, sender: int, receiver: int) -> bytes:
    """§3.2 `share-enc`: one AES-256-GCM key per direction."""
    return derive_key(shared, salt=sid, label=LABEL, purpose="share-enc", round_index=round_index, fields=(u32(sender), u32(receiver)))


def sigma(i: int, j: int) -> int:
    """§1: +1 if i < j else −1 (the sign with which i adds PRG(s_ij))."""
    return 1 if i < j else -1


def hedge_message(phash: bytes) -> bytes:
    """§3.2: the string a holder signs (deterministic Ed25519) to hedge its round randomness."""
    return LABEL.encode() + b"/hedge\x00" + phash


def hedged_seed(fresh: bytes, hedge_signature: bytes, *, phash: bytes, round_index: int, holder: int) -> bytes:
    """§3.2 `client-secrets`: 32-byte seed of every secret a holder draws this round.

    HKDF(ikm = fresh entropy ‖ Sig_identity(hedge), salt = params_hash). Even if an Entropy repeats
    (a replayed deterministic seed, a rerun of the same round), a different session gets different
    keys, and a broken Entropy still yields secrets known only to the identity-key holder.
    """
    return hkdf_sha256(fresh + hedge_signature, salt=phash,
                       info=encode_info(LABEL, "client-secrets", round_index, u32(holder)), length=32)
