"""HKDF-SHA256 (RFC 5869) with securefed's domain-separated ``info`` encoding.

``info = label ‖ "/" ‖ purpose ‖ 0x00 ‖ u32(round) ‖ lp(field_1) ‖ …`` (protocols/secagg.md §3.2):
every derived key names protocol, version, purpose, round and the ids it belongs to, so no two
uses of the same input keying material can collide.
"""

from __future__ import annotations

import hashlib
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = ["hkdf_sha256", "encode_info", "derive_key", "labelled_hash", "u32", "lp"]


def u32(x: int) -> bytes:
    """4-byte big-endian unsigned integer."""
    if not isinstance(x, int) or isinstance(x, bool):
        raise TypeError("u32 expects an int")
    if not 0 <= x < 1 << 32:
        raise ValueError(f"{x} does not fit in 32 bits")
    return struct.pack(">I", x)


def lp(b: bytes) -> bytes:
    """Length-prefixed bytes: u32(len) ‖ b."""
    if not isinstance(b, (bytes, bytearray)):
        raise TypeError("lp expects bytes")
    return u32(len(b)) + bytes(b)


def _check_bytes(name: str, value: object) -> bytes:
    if not isinstance(value, (bytes, bytearray)):
        raise TypeError(f"{name} must be bytes")
    return bytes(value)


def hkdf_sha256(ikm: bytes, *, salt: bytes | None, info: bytes, length: int = 32) -> bytes:
    """Plain RFC 5869 HKDF-SHA256 (extract then expand); ``salt=None`` means HashLen zeros."""
    ikm = _check_bytes("ikm", ikm)
    info = _check_bytes("info", info)
    if salt is not None:
        salt = _check_bytes("salt", salt)
    if not isinstance(length, int) or not 1 <= length <= 255 * 32:
        raise ValueError("length must be an int in [1, 8160]")
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)


def encode_info(label: str, purpose: str, round_index: int, *fields: bytes) -> bytes:
    """protocols/secagg.md §3.2: label ‖ "/" ‖ purpose ‖ 0x00 ‖ u32(round) ‖ lp(field)…"""
    if not isinstance(label, str) or not isinstance(purpose, str):
        raise TypeError("label and purpose must be str")
    if "\x00" in label or "\x00" in purpose or not purpose:
        raise ValueError("label/purpose must be non-empty and free of NUL")
    out = label.encode("ascii") + b"/" + purpose.encode("ascii") + b"\x00" + u32(round_index)
    return out + b"".join(lp(_check_bytes("field", f)) for f in fields)


def derive_key(ikm: bytes, *, salt: bytes, label: str, purpose: str, round_index: int, fields: tuple[bytes, ...] = ()) -> bytes:
    """A 32-byte key for one purpose (protocols/secagg.md §3.2 table)."""
    salt = _check_bytes("salt", salt)
    if len(salt) != 32:
        raise ValueError("salt (session id) must be 32 bytes")
    return hkdf_sha256(ikm, salt=salt, info=encode_info(label, purpose, round_index, *fields), length=32)


def labelled_hash(label: str, purpose: str, *parts: bytes) -> bytes:
    """SHA-256(label ‖ "/" ‖ purpose ‖ 0x00 ‖ parts…) (protocols/secagg.md §3.2 "other hashes")."""
    h = hashlib.sha256(label.encode("ascii") + b"/" + purpose.encode("ascii") + b"\x00")
    for p in parts:
        h.update(_check_bytes("part", p))
    return h.digest()
