"""Pairwise holder-to-holder channel for the CKKS secret context (protocols/ckks.md §3.2, §6).

X25519 static-static agreement between the two holders' long-term keys, HKDF-SHA256 with a
labelled ``info`` (protocol+version, purpose, round, generation, sender, receiver), AES-256-GCM
with the same fields plus the key id as associated data. The server relays the result and cannot
read it. Built on securefed.primitives.{keys,kdf,aead} (the secure-aggregation helpers): the
X25519 low-order check, the ``info`` encoding, the one-key-one-message AES-GCM with its opaque
failure and the Ed25519 identity keys are theirs; this file only fixes the CKKS labels.
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
    "seal_share",
    "open_share",
    "verify",
]

PROTOCOL = "securefed-ckks"
VERSION = 1
LABEL = f"{PROTOCOL}/v{VERSION}"
# Every KDF info / AEAD associated data / signed statement is label(<one of these>, ...) (§6).
LABELS = {
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
    """What the roster publishes about a holder: id, X25519 and Ed25519 public keys (32 B each)."""

    holder_id: int
    x25519: bytes
    ed25519: bytes

    def __post_init__(self) -> None:
        if isinstance(self.holder_id, bool) or not isinstance(self.holder_id, int) or self.holder_id < 0:
            raise TypeError("holder_id must be a non-negative int")
        for name in ("x25519", "ed25519"):
            v = getattr(self, name)
            if not isinstance(v, bytes) or len(v) != 32:
                raise ValueError(f"{name} must be 32 bytes")


class HolderSecrets:
    """A holder's long-term private keys (X25519 agreement + Ed25519 identity). Never serialised here."""

    def __init__(self, holder_id: int, x25519: X25519KeyPair, identity: IdentityKey) -> None:
        if isinstance(holder_id, bool) or not isinstance(holder_id, int) or holder_id < 0:
            raise TypeError("holder_id must be a non-negative int")
        if not isinstance(x25519, X25519KeyPair) or not isinstance(identity, IdentityKey):
            raise TypeError("x25519 must be an X25519KeyPair and identity an IdentityKey")
        self.holder_id = holder_id
        self._x = x25519
        self._id = identity

    @classmethod
    def generate(cls, holder_id: int, entropy: Entropy) -> "HolderSecrets":
        return cls(holder_id, X25519KeyPair.generate(entropy), generate_identity(entropy))

    def public(self) -> HolderPublic:
        return HolderPublic(self.holder_id, self._x.public, self._id.public_bytes)

    def sign(self, statement: bytes) -> bytes:
        return self._id.sign(statement)

    def _channel_key(self, peer_x25519: bytes, info: bytes) -> bytes:
        try:
            shared = x25519_shared(self._x.private, validate_x25519_public(peer_x25519))
        except ValueError:  # low-order point: all-zero shared secret (RFC 7748 §6.1)
            raise KeyShareError("peer_x25519 is not a valid X25519 public key") from None
        return hkdf_sha256(shared, salt=_SALT, info=info)

    def __repr__(self) -> str:  # never print key material
        return f"HolderSecrets(holder_id={self.holder_id})"


def _fields(generation: int, sender: int, receiver: int) -> dict:
    return {"generation": generation, "sender": sender, "receiver": receiver}


def seal_share(
    *, sender: HolderSecrets, receiver: HolderPublic, generation: int, round_index: int,
    key_id: str, plaintext: bytes, entropy: Entropy | None = None,
) -> bytes:
    """AES-256-GCM(k, plaintext, ad), k = HKDF(X25519(sender, receiver), info) (§3.2).

    k is unique to (generation, round, sender -> receiver) and seals exactly one message, so the
    fixed nonce of primitives.aead is never reused under a key; ``entropy`` is accepted for
    interface stability and not needed.
    """
    f = _fields(generation, sender.holder_id, receiver.holder_id)
    key = sender._channel_key(receiver.x25519, label(LABELS["keyshare_key"], round=round_index, **f))
    ad = label(LABELS["keyshare_ad"], round=round_index, **f, key_id=key_id)
    return aead.seal(key, plaintext, ad)


def open_share(
    *, receiver: HolderSecrets, sender: HolderPublic, generation: int, round_index: int,
    key_id: str, blob: bytes,
) -> bytes:
    """Inverse of :func:`seal_share`; any failure raises one opaque :class:`KeyShareError`."""
    if not isinstance(blob, bytes):
        raise KeyShareError("key share failed authentication")
    f = _fields(generation, sender.holder_id, receiver.holder_id)
    key = receiver._channel_key(sender.x25519, label(LABELS["keyshare_key"], round=round_index, **f))
    ad = label(LABELS["keyshare_ad"], round=round_index, **f, key_id=key_id)
    try:
        return aead.open_(key, blob, ad)
    except aead.DecryptionFailed:
        raise KeyShareError("key share failed authentication") from None


def verify(public: HolderPublic, signature: bytes, statement: bytes) -> bool:
    """Ed25519 verification against the roster's key; False (never an exception) on failure."""
    return verify_signature(public.ed25519, signature, statement)
