"""The roster of the federation's known data holders: id → Ed25519 public key (protocols/secagg.md §9).

File format (JSON or YAML): ``{"version": 1, "holders": [{"id": <int ≥ 1>, "ed25519": "<64 hex>"}]}``;
loading rejects unknown keys, duplicate ids, duplicate keys and invalid Ed25519 points.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from securefed import jsonio
from securefed.configio import parse_yaml
from securefed.primitives.keys import KEY_BYTES, MAX_HOLDER_ID, IdentityKey

__all__ = ["Roster", "RosterError"]


class RosterError(ValueError):
    """A roster file or mapping is malformed."""


@dataclass(frozen=True)
class Roster:
    """The federation's known holders: id → Ed25519 public key (protocols/secagg.md §9)."""

    keys: Mapping[int, bytes]

    def __post_init__(self) -> None:
        if not isinstance(self.keys, Mapping):
            raise TypeError("keys must be a mapping of holder id -> ed25519 public key")
        clean: dict[int, bytes] = {}
        for hid, pk in self.keys.items():
            if not isinstance(hid, int) or isinstance(hid, bool):
                raise RosterError(f"holder id {hid!r} is not an int")
            if not 1 <= hid <= MAX_HOLDER_ID:
                raise RosterError(f"holder id {hid} outside [1, 2^31-1]")
            if not isinstance(pk, (bytes, bytearray)) or len(pk) != KEY_BYTES:
                raise RosterError(f"holder {hid}: ed25519 key must be 32 bytes")
            try:
                Ed25519PublicKey.from_public_bytes(bytes(pk))
            except ValueError:
                raise RosterError(f"holder {hid}: invalid ed25519 public key") from None
            clean[hid] = bytes(pk)
        if len(set(clean.values())) != len(clean):
            raise RosterError("two holders share one identity key")
        object.__setattr__(self, "keys", MappingProxyType(dict(sorted(clean.items()))))

    @classmethod
    def from_identities(cls, identities: Mapping[int, "IdentityKey | bytes"]) -> "Roster":
        return cls({hid: (k.public_bytes if isinstance(k, IdentityKey) else k) for hid, k in identities.items()})

    def __contains__(self, hid: object) -> bool:
        return hid in self.keys

    def public_key(self, hid: int) -> bytes:
        if hid not in self.keys:
            raise ValueError(f"holder {hid} is not on the roster")
        return self.keys[hid]

    def to_dict(self) -> dict:
        return {"version": 1, "holders": [{"id": h, "ed25519": k.hex()} for h, k in self.keys.items()]}

    @classmethod
    def from_dict(cls, data: object) -> "Roster":
        if not isinstance(data, dict) or set(data) != {"version", "holders"}:
            raise RosterError("roster must be a mapping with exactly the keys 'version' and 'holders'")
        if data["version"] != 1:
            raise RosterError(f"unsupported roster version {data['version']!r}")
        holders = data["holders"]
        if not isinstance(holders, list):
            raise RosterError("'holders' must be a list")
        keys: dict[int, bytes] = {}
        for n, entry in enumerate(holders):
            if not isinstance(entry, dict) or set(entry) != {"id", "ed25519"}:
                raise RosterError(f"holders[{n}] must have exactly the keys 'id' and 'ed25519'")
            hid, hexkey = entry["id"], entry["ed25519"]
            if not isinstance(hexkey, str) or len(hexkey) != 64:
                raise RosterError(f"holders[{n}].ed25519 must be 64 hex characters")
            try:
                raw = bytes.fromhex(hexkey)
            except ValueError:
                raise RosterError(f"holders[{n}].ed25519 is not hex") from None
            if hid in keys:
                raise RosterError(f"holder id {hid} listed twice")
            keys[hid] = raw
        return cls(keys)

    @classmethod
    def load(cls, path: str | Path) -> "Roster":
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            raise RosterError(f"roster file {p} is not UTF-8 text") from None
        try:   # strict JSON (no duplicate key, no NaN); any parse failure, too deep a nesting included, is one error
            data = jsonio.loads(text) if p.suffix == ".json" else parse_yaml(text)
        except (ValueError, yaml.YAMLError) as e:   # json.JSONDecodeError is a ValueError
            raise RosterError(f"roster file {p} does not parse: {e}") from None
        return cls.from_dict(data)

    def save(self, path: str | Path) -> None:
        p = Path(path)
        if p.suffix == ".json":
            p.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        else:
            p.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))
