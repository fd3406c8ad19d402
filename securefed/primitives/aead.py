"""AES-256-GCM for Shamir shares, bound to sender, receiver, round and session (protocols/secagg.md §3.4).

Each key is derived for one direction of one pair in one session and encrypts exactly one
message, so the fixed all-zero nonce is never reused under a key. After an authentication failure
only the opaque :class:`DecryptionFailed` is raised: no oracle about why.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from securefed.primitives.kdf import u32

__all__ = ["DecryptionFailed", "TAG_BYTES", "associated_data", "seal", "open_"]

TAG_BYTES = 16
_NONCE = b"\x00" * 12


class DecryptionFailed(Exception):
    """The ciphertext did not authenticate (wrong key, wrong binding, or tampered)."""

    def __init__(self) -> None:
        super().__init__("decryption failed")


def associated_data(label: str, *, session_id: bytes, round_index: int, sender: int, receiver: int) -> bytes:
    """label ‖ "/share" ‖ 0x00 ‖ session_id ‖ u32(round) ‖ u32(sender) ‖ u32(receiver)."""
    if not isinstance(session_id, (bytes, bytearray)) or len(session_id) != 32:
        raise ValueError("session_id must be 32 bytes")
    return label.encode("ascii") + b"/share\x00" + bytes(session_id) + u32(round_index) + u32(sender) + u32(receiver)


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, (bytes, bytearray)):
        raise TypeError("key must be bytes")
    if len(key) != 32:
        raise ValueError("key must be 32 bytes (AES-256)")
    return bytes(key)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """ciphertext ‖ 16-byte tag."""
    if not isinstance(plaintext, (bytes, bytearray)) or not isinstance(aad, (bytes, bytearray)):
        raise TypeError("plaintext and aad must be bytes")
    return AESGCM(_check_key(key)).encrypt(_NONCE, bytes(plaintext), bytes(aad))


def open_(key: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    """Plaintext, or :class:`DecryptionFailed` (one opaque error for every failure)."""
    if not isinstance(ciphertext, (bytes, bytearray)) or not isinstance(aad, (bytes, bytearray)):
        raise TypeError("ciphertext and aad must be bytes")
    key = _check_key(key)
    if len(ciphertext) < TAG_BYTES:
        raise DecryptionFailed()
    try:
        return AESGCM(key).decrypt(_NONCE, bytes(ciphertext), bytes(aad))
    except InvalidTag:
        raise DecryptionFailed() from None
