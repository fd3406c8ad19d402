"""X25519 agreement keys and Ed25519 identity keys (pure: no I/O; the roster file is securefed.secagg.roster).

protocols/secagg.md §3.1 (X25519, RFC 7748), §3.6 (Ed25519, RFC 8032).
Low-order X25519 points are rejected: RFC 7748 §6.1 lets a party check for an all-zero shared
secret, which ``cryptography`` does in ``exchange`` (it raises ValueError); validating a public key
is one exchange with a fixed clamped scalar, whose output is all-zero exactly for low-order points.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PrivateFormat, PublicFormat, NoEncryption

from securefed.primitives.rng import Entropy

__all__ = [
    "KEY_BYTES", "SIGNATURE_BYTES", "X25519KeyPair", "validate_x25519_public", "x25519_shared",
    "IdentityKey", "generate_identity", "verify_signature", "MAX_HOLDER_ID",
]

KEY_BYTES = 32
SIGNATURE_BYTES = 64
MAX_HOLDER_ID = (1 << 31) - 1
_RAW = (Encoding.Raw, PublicFormat.Raw)
_VALIDATOR = X25519PrivateKey.from_private_bytes(b"\x01" * 31 + b"\x40")  # any fixed scalar works


def _check_key_bytes(name: str, b: object) -> bytes:
    if not isinstance(b, (bytes, bytearray)):
        raise TypeError(f"{name} must be bytes")
    if len(b) != KEY_BYTES:
        raise ValueError(f"{name} must be {KEY_BYTES} bytes, got {len(b)}")
    return bytes(b)


def validate_x25519_public(pk: bytes) -> bytes:
    """Return ``pk`` if it is a 32-byte X25519 public key of large order; else ValueError."""
    pk = _check_key_bytes("x25519 public key", pk)
    try:
        _VALIDATOR.exchange(X25519PublicKey.from_public_bytes(pk))
    except ValueError:
        raise ValueError("x25519 public key is a low-order point") from None
    return pk


def x25519_shared(private: X25519PrivateKey, peer_public: bytes) -> bytes:
    """RFC 7748 §6.1 X25519(a, B); ValueError for a low-order peer key (all-zero output)."""
    if not isinstance(private, X25519PrivateKey):
        raise TypeError("private must be an X25519PrivateKey")
    pk = _check_key_bytes("peer public key", peer_public)
    try:
        return private.exchange(X25519PublicKey.from_public_bytes(pk))
    except ValueError:
        raise ValueError("x25519 exchange produced the all-zero secret (low-order peer key)") from None


class X25519KeyPair:
    """A fresh per-round X25519 key pair drawn from an Entropy."""

    def __init__(self, private: X25519PrivateKey) -> None:
        if not isinstance(private, X25519PrivateKey):
            raise TypeError("private must be an X25519PrivateKey")
        self.private = private
        self.public = private.public_key().public_bytes(*_RAW)

    @classmethod
    def generate(cls, entropy: Entropy) -> "X25519KeyPair":
        return cls(X25519PrivateKey.from_private_bytes(entropy.random_bytes(KEY_BYTES)))

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> "X25519KeyPair":
        return cls(X25519PrivateKey.from_private_bytes(_check_key_bytes("x25519 private key", raw)))

    def private_bytes(self) -> bytes:
        """Raw 32-byte private key (only for Shamir sharing; never persist or log it)."""
        return self.private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def shared(self, peer_public: bytes) -> bytes:
        return x25519_shared(self.private, peer_public)

    def __repr__(self) -> str:
        return f"X25519KeyPair(public={self.public.hex()[:16]}…)"


class IdentityKey:
    """A holder's long-term Ed25519 identity (private) key."""

    def __init__(self, private: Ed25519PrivateKey) -> None:
        if not isinstance(private, Ed25519PrivateKey):
            raise TypeError("private must be an Ed25519PrivateKey")
        self._private = private
        self.public_bytes = private.public_key().public_bytes(*_RAW)

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> "IdentityKey":
        return cls(Ed25519PrivateKey.from_private_bytes(_check_key_bytes("ed25519 private key", raw)))

    def private_bytes(self) -> bytes:
        """For key files written by the application (keygen); never log it."""
        return self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    def sign(self, message: bytes) -> bytes:
        if not isinstance(message, (bytes, bytearray)):
            raise TypeError("message must be bytes")
        return self._private.sign(bytes(message))

    def __repr__(self) -> str:
        return f"IdentityKey(public={self.public_bytes.hex()[:16]}…)"


def generate_identity(entropy: Entropy) -> IdentityKey:
    """A fresh Ed25519 identity key from 32 bytes of ``entropy`` (RFC 8032 §5.1.5)."""
    if not isinstance(entropy, Entropy):
        raise TypeError("entropy must provide random_bytes")
    return IdentityKey.from_private_bytes(entropy.random_bytes(KEY_BYTES))


def verify_signature(public: bytes, signature: bytes, message: bytes) -> bool:
    """True iff ``signature`` is a valid Ed25519 signature of ``message`` under ``public``."""
    if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_BYTES:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(_check_key_bytes("ed25519 public key", public)).verify(bytes(signature), bytes(message))
    except (InvalidSignature, ValueError):
        return False
    return True
