"""Pairwise holder-to-holder channel for the CKKS secret context (protocols/ckks.md §3.2, §6).

Per key generation every key holder draws a fresh X25519 key pair and advertises its public half
signed with its long-term Ed25519 identity (the roster key). The leader seals the secret context for
holder j under HKDF-SHA256(X25519(leader's fresh key, j's fresh key)) with a labelled ``info``
(protocol+version, purpose, round, generation, sender, receiver, both public keys), AES-256-GCM with
the key id in the associated data. Fresh keys on both sides give forward secrecy: the private halves
are deleted once the share is sealed/opened, so a later compromise of a roster key does not open
recorded shares. The server relays adverts and shares and can read neither.

Built on securefed.primitives.{keys,kdf,aead} (the secure-aggregation helpers): X25519 key pairs
and the low-order check, the ``info`` encoding, one-key-one-message AES-GCM with its opaque failure,
Ed25519 identities; this file fixes the CKKS labels only.
"""

from __future__ import annotations

from dataclasses import dataclass

from securefed.primitives import aead
from securefed.primitives.kdf import encode_info, hkdf_sha256, labelled_hash
from securefed.primitives.keys import (
    IdentityKey, X25519KeyPair, generate_identity, validate_x25519_public, verify_signature, x25519_shared,
)
from securefed.primitives.rng import Entropy

__all__ = [
    "PROTOCOL",
    "VERSION",
    "LABEL",
    "LABELS",
    "KeyShareError",
    "HolderPublic",
    "HolderSecrets",
    "label",
    "advert_statement",
    "seal_share",
    "open_share",
    "verify",
]

PROTOCOL = "securefed-ckks"
VERSION = 1
LABEL = f"{PROTOCOL}/v{VERSION}"
# Every KDF info / AEAD associated data / signed statement is label(<one of these>, ...) (§6).
LABELS = {
    "advert_sig": "key-advert",  # Ed25519 statement: a holder's fresh X25519 key for one generation
    "keyshare_key": "keyshare-key",  # HKDF info -> AES-256-GCM key for one secret-context share
    "keyshare_ad": "keyshare-ad",  # AES-GCM associated data of that share
    "pubctx_sig": "public-context",  # Ed25519 statement: leader announces the public context
    "upload_sig": "upload",  # Ed25519 statement: holder uploads its ciphertexts
}
_SALT = labelled_hash(LABEL, "hkdf-salt")  # fixed public salt (RFC 5869 §3.1), 32 bytes


class KeyShareError(ValueError):
    """A key share could not be opened. Deliberately opaque (no oracle on why)."""


def label(purpose: str, *, round: int, **fields: int | str) -> bytes:
    """``encode_info("securefed-ckks/v1", purpose, round, lp("k1=v1"), lp("k2=v2"), ...)``.

    The fields are length-prefixed ``name=value`` ASCII strings in a fixed order per purpose.
    """
    if purpose not in LABELS.values():
        raise ValueError(f"purpose {purpose!r} is not a registered label")
    parts = []
    for k, v in fields.items():
        if isinstance(v, bool) or not isinstance(v, (int, str)) or not str(v).isascii():
            raise ValueError(f"label field {k} must be an int or an ASCII string")
        parts.append(f"{k}={v}".encode("ascii"))
    return encode_info(LABEL, purpose, round, *parts)


@dataclass(frozen=True)
class HolderPublic:
    """What the roster publishes about a holder: its id and Ed25519 identity key (32 bytes)."""

    holder_id: int
    ed25519: bytes

    def __post_init__(self) -> None:
        if isinstance(self.holder_id, bool) or not isinstance(self.holder_id, int) or self.holder_id < 0:
            raise TypeError("holder_id must be a non-negative int")
        if not isinstance(self.ed25519, bytes) or len(self.ed25519) != 32:
            raise ValueError("ed25519 must be 32 bytes")


class HolderSecrets:
    """A holder's long-term Ed25519 identity (the roster key). Never serialised here."""

    def __init__(self, holder_id: int, identity: IdentityKey) -> None:
        if isinstance(holder_id, bool) or not isinstance(holder_id, int) or holder_id < 0:
            raise TypeError("holder_id must be a non-negative int")
        if not isinstance(identity, IdentityKey):
            raise TypeError("identity must be a securefed.primitives.keys.IdentityKey")
        self.holder_id = holder_id
        self._id = identity

    @classmethod
    def generate(cls, holder_id: int, entropy: Entropy) -> "HolderSecrets":
        return cls(holder_id, generate_identity(entropy))

    def public(self) -> HolderPublic:
        return HolderPublic(self.holder_id, self._id.public_bytes)

    def sign(self, statement: bytes) -> bytes:
        return self._id.sign(statement)

    def __repr__(self) -> str:  # never print key material
        return f"HolderSecrets(holder_id={self.holder_id})"


def advert_statement(generation: int, round_index: int, holder: int, x25519_public: bytes) -> bytes:
    """What a holder signs to advertise its fresh X25519 key for one generation (§3.2)."""
    return label(LABELS["advert_sig"], round=round_index, generation=generation, holder=holder,
                 x25519=bytes(x25519_public).hex())


def _share_key(mine: X25519KeyPair, peer_public: bytes, info: bytes) -> bytes:
    try:
        shared = x25519_shared(mine.private, validate_x25519_public(peer_public))
    except ValueError:  # low-order point: all-zero shared secret (RFC 7748 §6.1)
        raise KeyShareError("peer X25519 key is not a valid public key") from None
    return hkdf_sha256(shared, salt=_SALT, info=info)


def _labels(generation: int, round_index: int, sender: int, receiver: int, sender_pk: bytes,
            receiver_pk: bytes, key_id: str) -> tuple[bytes, bytes]:
    f = {"generation": generation, "sender": sender, "receiver": receiver,
         "sender_key": bytes(sender_pk).hex(), "receiver_key": bytes(receiver_pk).hex()}
    return (label(LABELS["keyshare_key"], round=round_index, **f),
            label(LABELS["keyshare_ad"], round=round_index, **f, key_id=key_id))


def seal_share(
    *, sender: int, sender_key: X25519KeyPair, receiver: int, receiver_public: bytes, generation: int,
    round_index: int, key_id: str, plaintext: bytes,
) -> bytes:
    """AES-256-GCM(k, plaintext, ad), k = HKDF(X25519(sender_key, receiver_public), info) (§3.2).

    k is unique to (generation, round, sender -> receiver, both fresh keys) and seals exactly one
    message, so the fixed nonce of primitives.aead is never reused under a key.
    """
    info, ad = _labels(generation, round_index, sender, receiver, sender_key.public, receiver_public, key_id)
    return aead.seal(_share_key(sender_key, receiver_public, info), plaintext, ad)


def open_share(
    *, receiver: int, receiver_key: X25519KeyPair, sender: int, sender_public: bytes, generation: int,
    round_index: int, key_id: str, blob: bytes,
) -> bytes:
    """Inverse of :func:`seal_share`; any failure raises one opaque :class:`KeyShareError`."""
    if not isinstance(blob, bytes):
        raise KeyShareError("key share failed authentication")
    info, ad = _labels(generation, round_index, sender, receiver, sender_public, receiver_key.public, key_id)
    key = _share_key(receiver_key, sender_public, info)
    try:
        return aead.open_(key, blob, ad)
    except aead.DecryptionFailed:
        raise KeyShareError("key share failed authentication") from None


def verify(public: HolderPublic, signature: bytes, statement: bytes) -> bool:
    """Ed25519 verification against the roster's key; False (never an exception) on failure."""
    return verify_signature(public.ed25519, signature, statement)
