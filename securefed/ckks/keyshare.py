"""Pairwise holder-to-holder channel for the CKKS secret context (protocols/ckks.md §3.2, §6).

X25519 static-static agreement between the two holders' long-term keys, HKDF-SHA256 with a
labelled ``info`` (protocol, version, purpose, generation, round, sender, receiver), AES-256-GCM
with the same fields plus the key id in the associated data. The server relays the result and
cannot read it. Built directly on ``cryptography`` because securefed.primitives.{kdf,aead,keys}
had not landed when this was written; the interface here (``HolderSecrets``, ``HolderPublic``,
``seal_share``, ``open_share``, ``sign``/``verify``) is what the rest of securefed.ckks uses, so
switching to those helpers later touches this file only.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from securefed.primitives.rng import Entropy

__all__ = [
    "PROTOCOL",
    "VERSION",
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
# Every KDF info / AEAD associated data / signed statement starts with one of these (§6).
LABELS = {
    "keyshare_key": "keyshare-key",  # HKDF info -> AES-256-GCM key for one secret-context share
    "keyshare_ad": "keyshare-ad",  # AES-GCM associated data of that share
    "pubctx_sig": "public-context",  # Ed25519 statement: leader announces the public context
    "upload_sig": "upload",  # Ed25519 statement: holder uploads its ciphertexts
}
_NONCE = 12


class KeyShareError(ValueError):
    """A key share could not be opened. Deliberately opaque (no oracle on why)."""


def label(purpose: str, **fields: int | str) -> bytes:
    """``securefed-ckks|v1|<purpose>|k1=v1|k2=v2...`` with keys in the given (fixed) order."""
    if purpose not in LABELS.values():
        raise ValueError(f"purpose {purpose!r} is not a registered label")
    for k, v in fields.items():
        if isinstance(v, bool) or not isinstance(v, (int, str)) or "|" in str(v) or "=" in str(v):
            raise ValueError(f"label field {k} must be an int or a plain string")
    parts = [PROTOCOL, f"v{VERSION}", purpose] + [f"{k}={v}" for k, v in fields.items()]
    return "|".join(parts).encode("ascii")


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
    """A holder's long-term private keys. Never serialised by securefed.ckks."""

    def __init__(self, holder_id: int, x25519: X25519PrivateKey, ed25519: Ed25519PrivateKey) -> None:
        if isinstance(holder_id, bool) or not isinstance(holder_id, int) or holder_id < 0:
            raise TypeError("holder_id must be a non-negative int")
        if not isinstance(x25519, X25519PrivateKey) or not isinstance(ed25519, Ed25519PrivateKey):
            raise TypeError("x25519/ed25519 must be cryptography private keys")
        self.holder_id = holder_id
        self._x = x25519
        self._ed = ed25519

    @classmethod
    def generate(cls, holder_id: int, entropy: Entropy) -> "HolderSecrets":
        x = X25519PrivateKey.from_private_bytes(entropy.random_bytes(32))
        ed = Ed25519PrivateKey.from_private_bytes(entropy.random_bytes(32))
        return cls(holder_id, x, ed)

    def public(self) -> HolderPublic:
        raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
        return HolderPublic(self.holder_id, self._x.public_key().public_bytes(*raw), self._ed.public_key().public_bytes(*raw))

    def sign(self, statement: bytes) -> bytes:
        return self._ed.sign(statement)

    def _channel_key(self, peer_x25519: bytes, info: bytes) -> bytes:
        if not isinstance(peer_x25519, bytes) or len(peer_x25519) != 32:
            raise ValueError("peer_x25519 must be 32 bytes")
        try:
            shared = self._x.exchange(X25519PublicKey.from_public_bytes(peer_x25519))
        except ValueError:  # low-order point: all-zero shared secret (RFC 7748 §6.1)
            raise KeyShareError("peer_x25519 is not a valid X25519 public key") from None
        # RFC 5869: salt = protocol name (fixed, public); info = labelled context (protocols/ckks.md §6)
        return HKDF(hashes.SHA256(), 32, PROTOCOL.encode(), info).derive(shared)

    def __repr__(self) -> str:  # never print key material
        return f"HolderSecrets(holder_id={self.holder_id})"


def _share_fields(generation: int, round_index: int, sender: int, receiver: int) -> dict:
    return {"generation": generation, "round": round_index, "sender": sender, "receiver": receiver}


def seal_share(
    *, sender: HolderSecrets, receiver: HolderPublic, generation: int, round_index: int,
    key_id: str, plaintext: bytes, entropy: Entropy,
) -> bytes:
    """nonce(12) || AES-256-GCM(k, nonce, plaintext, ad); k = HKDF(X25519(sender, receiver), info)."""
    f = _share_fields(generation, round_index, sender.holder_id, receiver.holder_id)
    key = sender._channel_key(receiver.x25519, label(LABELS["keyshare_key"], **f))
    nonce = entropy.random_bytes(_NONCE)
    ad = label(LABELS["keyshare_ad"], **f, key_id=key_id)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, ad)


def open_share(
    *, receiver: HolderSecrets, sender: HolderPublic, generation: int, round_index: int,
    key_id: str, blob: bytes,
) -> bytes:
    """Inverse of :func:`seal_share`; any failure raises one opaque :class:`KeyShareError`."""
    if not isinstance(blob, bytes) or len(blob) < _NONCE + 16:
        raise KeyShareError("key share failed authentication")
    f = _share_fields(generation, round_index, sender.holder_id, receiver.holder_id)
    key = receiver._channel_key(sender.x25519, label(LABELS["keyshare_key"], **f))
    ad = label(LABELS["keyshare_ad"], **f, key_id=key_id)
    try:
        return AESGCM(key).decrypt(blob[:_NONCE], blob[_NONCE:], ad)
    except InvalidTag:
        raise KeyShareError("key share failed authentication") from None


def verify(public: HolderPublic, signature: bytes, statement: bytes) -> bool:
    """Ed25519 verification against the roster's key; False (never an exception) on failure."""
    if not isinstance(signature, bytes) or len(signature) != 64:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public.ed25519).verify(signature, statement)
    except InvalidSignature:
        return False
    return True
