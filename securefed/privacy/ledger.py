"""Hash-chained, append-only privacy ledger (protocols/dp.md §7).

One JSON object per line, written in canonical form (sorted keys, no spaces, ASCII, ±∞ as the strings
"inf"/"-inf"). Each entry carries ``seq`` (0, 1, …) and ``prev_hash`` = SHA-256 of the canonical JSON
of the previous entry (64 zeros for the first). :func:`read_ledger` re-derives the chain and refuses
the file on any mismatch, non-canonical line or torn (unterminated) last line: a broken ledger is
never silently continued. The head hash (hash of the last entry) is anchored in checkpoints
(PrivacySession.state_dict) and in the report, which is what catches edits of the *last* entry.

Signatures (§7.1): a ledger opened with a ``signer`` (an Ed25519 :class:`IdentityKey`) adds to every
entry ``sig`` = Ed25519(SIGNATURE_LABEL ‖ canonical JSON of the entry without ``sig``), hex; the chain
hash covers the signature. A ledger opened with a ``public_key`` (or a signer, whose own key is used)
verifies every signature on load and fails closed: an unsigned entry or a bad signature is a
:class:`LedgerError` naming the entry. Without a key, only the chain is checked — anyone with write
access can then rewrite the whole file consistently, which is what the signatures prevent.

Appends are one ``os.write`` of the whole line on an O_APPEND descriptor followed by ``fsync``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
from pathlib import Path
from typing import Any

from securefed.primitives.keys import IdentityKey, verify_signature

__all__ = ["GENESIS", "SIGNATURE_LABEL", "LedgerError", "LedgerWriteError", "canonical_json", "entry_hash", "read_ledger", "Ledger",
           "signed_message", "entry_signature_ok", "END_FILE", "write_end_record", "read_end_record",
           "end_record_problems", "own_ledger_heads", "end_record_own_problems"]

GENESIS = "0" * 64
SIGNATURE_LABEL = b"securefed/privacy-ledger/v1/entry\x00"  # domain separation (protocols/dp.md §7.1)
END_LABEL = b"securefed/privacy-ledger/v1/end\x00"        # the end-of-run record's signatures (§7.4)
END_FILE = "end.json"


class LedgerError(ValueError):
    """The ledger file is malformed or its hash chain is broken."""


class LedgerWriteError(OSError):
    """An entry could not be appended (disk full, read-only, I/O error). The file was cut back to its length before
    the append, so it holds every earlier entry and no part of this one: the entry was not recorded, and whatever it
    was to record must not happen (an audit filled a holder's disk: the short write left a torn line, and the
    next append wrote after it, breaking the chain in the middle of the file)."""


def _encode_floats(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        if math.isnan(obj):
            raise LedgerError("NaN cannot be stored in the ledger")
        return "inf" if obj > 0 else "-inf"
    if isinstance(obj, dict):
        return {str(k): _encode_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode_floats(v) for v in obj]
    return obj


def canonical_json(entry: dict) -> str:
    return json.dumps(_encode_floats(entry), sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False)


def entry_hash(entry: dict) -> str:
    return hashlib.sha256(canonical_json(entry).encode("ascii")).hexdigest()


def signed_message(entry: dict) -> bytes:
    """What an entry's signature covers: the label and the canonical JSON of the entry without ``sig``."""
    body = {k: v for k, v in entry.items() if k != "sig"}
    return SIGNATURE_LABEL + canonical_json(body).encode("ascii")


def entry_signature_ok(entry: dict, public_key: bytes) -> bool:
    sig = entry.get("sig")
    if not isinstance(sig, str) or len(sig) != 128:
        return False
    try:
        raw = bytes.fromhex(sig)
    except ValueError:
        return False
    return verify_signature(public_key, raw, signed_message(entry))


def _check_public_key(public_key: object) -> bytes:
    if not isinstance(public_key, (bytes, bytearray)) or len(public_key) != 32:
        raise TypeError("public_key must be 32 bytes (a raw Ed25519 public key)")
    return bytes(public_key)


def read_ledger(path: str | Path, *, public_key: bytes | None = None) -> list[dict]:
    """All entries of a ledger, after verifying every line and link (and, with ``public_key``, every
    signature); [] if the file does not exist."""
    p = Path(path)
    if not p.exists():
        return []
    raw = p.read_bytes()
    if raw and not raw.endswith(b"\n"):
        raise LedgerError(f"{p}: last line is incomplete (torn write or truncation); refusing to continue")
    entries: list[dict] = []
    prev = GENESIS
    # lines end in "\n" only (a "\r" stays in its line and fails the canonical form below)
    for i, bline in enumerate(raw.split(b"\n")[:-1] if raw else []):
        try:
            line = bline.decode("ascii", errors="strict")
            entry = json.loads(line)
        except UnicodeDecodeError:
            raise LedgerError(f"{p}: line {i + 1} is not ASCII (a canonical entry escapes every other character)") from None
        except (json.JSONDecodeError, RecursionError):
            raise LedgerError(f"{p}: line {i + 1} is not valid JSON") from None
        if not isinstance(entry, dict) or canonical_json(entry) != line:
            raise LedgerError(f"{p}: line {i + 1} is not a canonical ledger entry (edited?)")
        if entry.get("seq") != i:
            raise LedgerError(f"{p}: line {i + 1} has seq {entry.get('seq')!r}, expected {i}")
        if entry.get("prev_hash") != prev:
            raise LedgerError(f"{p}: hash chain broken at line {i + 1} (entry {i - 1} was modified, removed or reordered)")
        if public_key is not None:
            if "sig" not in entry:
                raise LedgerError(f"{p}: entry {i} (line {i + 1}) is not signed; this ledger must be signed")
            if not entry_signature_ok(entry, public_key):
                raise LedgerError(f"{p}: entry {i} (line {i + 1}) has an invalid signature (edited, or signed by another key)")
        prev = entry_hash(entry)
        entries.append(entry)
    return entries


def decode_floats(value: Any) -> Any:
    """Inverse of the ±∞ string encoding for one value."""
    if value == "inf":
        return math.inf
    if value == "-inf":
        return -math.inf
    return value


class Ledger:
    """An open, verified ledger file; :meth:`append` fills in ``seq`` and ``prev_hash`` (and ``sig``).

    ``signer``: sign every appended entry (and verify the existing ones under its public key).
    ``public_key``: verify every signature on load (fail closed on a missing or invalid one).
    """

    def __init__(self, path: str | Path, *, signer: IdentityKey | None = None, public_key: bytes | None = None) -> None:
        if signer is not None and not isinstance(signer, IdentityKey):
            raise TypeError("signer must be a securefed.primitives.keys.IdentityKey")
        if public_key is not None:
            public_key = _check_public_key(public_key)
            if signer is not None and public_key != signer.public_bytes:
                raise ValueError("public_key is not the signer's public key")
        self.path = Path(path)
        self.signer = signer
        self.public_key = public_key if public_key is not None else (signer.public_bytes if signer is not None else None)
        self.entries = read_ledger(self.path, public_key=self.public_key)

    @property
    def head(self) -> str:
        return entry_hash(self.entries[-1]) if self.entries else GENESIS

    def head_at(self, n: int) -> str:
        """Hash of entry n−1 (the head after the first n entries)."""
        if not 0 <= n <= len(self.entries):
            raise LedgerError(f"ledger has {len(self.entries)} entries, not {n}")
        return entry_hash(self.entries[n - 1]) if n else GENESIS

    def _write_error(self, e: OSError, kept: str) -> LedgerWriteError:
        err = LedgerWriteError(f"{self.path}: entry {len(self.entries)} could not be appended ({e.strerror or e}); "
                               f"{kept}")
        err.errno = e.errno
        return err

    def append(self, fields: dict) -> dict:
        """Append one entry (durably: written and fsync'd) or raise :class:`LedgerWriteError` with the file as it was."""
        if "seq" in fields or "prev_hash" in fields:
            raise ValueError("seq and prev_hash are set by the ledger")
        if "sig" in fields:
            raise ValueError("sig is set by the ledger")
        entry = dict(fields, seq=len(self.entries), prev_hash=self.head)
        if self.signer is not None:
            entry["sig"] = self.signer.sign(signed_message(json.loads(canonical_json(entry)))).hex()
        line = (canonical_json(entry) + "\n").encode("ascii")
        new = not self.path.exists()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # 0600: the entries list who took part in each round, which the amplification assumes secret (dp.md §11)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        except OSError as e:
            raise self._write_error(e, "the ledger is unchanged") from None
        size = os.fstat(fd).st_size
        try:
            if os.write(fd, line) != len(line):   # a full disk writes part of the line
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            os.fsync(fd)
        except OSError as e:
            try:   # all or nothing: no torn line for the next append to write after
                os.ftruncate(fd, size)
                os.fsync(fd)
                kept = "the ledger is unchanged"
            except OSError:
                kept = "a torn last line may remain: remove that line only"
            raise self._write_error(e, kept) from None
        finally:
            os.close(fd)
        if new:  # make the new directory entry durable too
            try:
                dfd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            except OSError as e:
                raise self._write_error(e, "the entry may not be durable") from None
        stored = json.loads(canonical_json(entry))
        self.entries.append(stored)
        return stored


# ------------------------------------------------------------------ the end-of-run record (protocols/dp.md §7.4)


def _end_message(record: dict) -> bytes:
    return END_LABEL + canonical_json({k: v for k, v in record.items() if k != "sig"}).encode("ascii")


def _heads(ledger_dir: Path) -> tuple[int, str, dict[str, dict]]:
    server = read_ledger(ledger_dir / "ledger.jsonl")
    views = {}
    for p in sorted((ledger_dir / "holders").glob("holder-*.jsonl")):
        es = read_ledger(p)
        views[p.stem.removeprefix("holder-")] = {"entries": len(es), "head": entry_hash(es[-1]) if es else GENESIS}
    return len(server), (entry_hash(server[-1]) if server else GENESIS), views


def own_ledger_heads(paths: dict[int, Path]) -> dict[str, dict]:
    """{holder: {"entries", "head"}} of the holders' own ledgers at ``paths`` (§7.4: a simulation's
    holders/<id>/ledger.jsonl; a missing file holds 0 entries). A ledger that does not read (a holder process still
    writing its line) is left out: the verifier then checks it as before, by itself."""
    out = {}
    for h, p in sorted(paths.items()):
        try:
            es = read_ledger(p)
        except LedgerError:
            continue
        out[str(h)] = {"entries": len(es), "head": entry_hash(es[-1]) if es else GENESIS}
    return out


def write_end_record(ledger_dir: str | Path, *, run_id: str | None, signer: IdentityKey | None,
                     model_sha256: str | None = None, own_ledgers: dict[int, Path] | None = None) -> dict:
    """Close the run's ledgers (§7.4): ``end.json`` names how many entries the server ledger and each view
    ledger hold and their heads, and the SHA-256 of the model the run exported (``model_sha256``), signed like the
    entries (its own label). Without it a reader cannot tell a finished run from one whose ledgers were cut back to
    a signed prefix, nor whose model the ε is. ``own_ledgers``: the holders' own ledgers the coordinator can read
    (a simulation's), closed in ``"own"`` the same way — a verifier then finds a holder's whole directory deleted,
    or its ledger's tail cut, although neither needs a key. Written atomically."""
    d = Path(ledger_dir)
    # a run that released nothing still closes a server ledger: an empty one, so that verify and the report find
    # its records (ε = 0) instead of a missing ledger, which they refuse
    if not (d / "ledger.jsonl").exists():
        (d / "ledger.jsonl").touch()
    n, head, views = _heads(d)
    rec = {"version": 1, "kind": "end_of_run", "run_id": run_id, "ledger_entries": n, "ledger_head": head, "views": views}
    if model_sha256 is not None:
        rec["model_sha256"] = model_sha256
    if own_ledgers:
        rec["own"] = own_ledger_heads(own_ledgers)
    if signer is not None:
        rec["sig"] = signer.sign(_end_message(rec)).hex()
    tmp = d / (END_FILE + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        data = (canonical_json(rec) + "\n").encode("ascii")
        if os.write(fd, data) != len(data):  # pragma: no cover - regular files write fully
            raise OSError("short write of the end record")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, d / END_FILE)
    return rec


def end_record_own_problems(rec: dict, owns: dict[int, list[dict]]) -> list[str]:
    """Why the holders' own ledgers ``owns`` (holder → entries) do not hold what a verified end record closes in
    ``"own"`` ([] if they do, or if the record has none, as a deployment's or an older run's). Each must begin with
    exactly the closed entries (a holder process may append after the coordinator closed: a late release is still
    recorded); a holder closed at 0 entries need not be there (§7.4)."""
    want_all = rec.get("own")
    if want_all is None:
        return []
    if not isinstance(want_all, dict):
        return ["has a malformed \"own\" field"]
    for h in sorted(want_all, key=lambda x: (len(x), x)):
        want = want_all[h]
        n, head = (want.get("entries"), want.get("head")) if isinstance(want, dict) else (None, None)
        if not h.isdigit() or isinstance(n, bool) or not isinstance(n, int) or n < 0 or not isinstance(head, str):
            return [f"has a malformed \"own\" entry for holder {h!r}"]
        if n == 0:
            continue
        es = owns.get(int(h))
        if not es:
            return [f"closes holder {h}'s own ledger at {n} entries, but it is not here (holders/{h}/ledger.jsonl "
                    "deleted? a ledger kept elsewhere is passed with --holder-ledger)"]
        if len(es) < n or entry_hash(es[n - 1]) != head:
            return [f"closes holder {h}'s own ledger at {n} entries (head {head[:16]}…), but it holds {len(es)} "
                    "that do not begin with them: entries were cut or rewritten"]
    return []


def read_end_record(ledger_dir: str | Path) -> dict | None:
    """The end-of-run record, or None if there is none; LedgerError if it is not a canonical JSON object."""
    p = Path(ledger_dir) / END_FILE
    if not p.exists():
        return None
    raw = p.read_bytes()
    try:
        text = raw.decode("ascii")
        rec = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise LedgerError(f"{END_FILE} is not ASCII JSON") from None
    if not isinstance(rec, dict) or canonical_json(rec) + "\n" != text:
        raise LedgerError(f"{END_FILE} is not a canonical record (edited?)")
    return rec


def end_record_problems(rec: dict, *, public_key: bytes | None, server: list[dict],
                        views: dict[int, list[dict]]) -> list[str]:
    """Why ``rec`` does not close exactly these ledgers ([] if it does): its signature under the coordinator's
    key, then the server ledger's and every view ledger's entry count and head, exactly (§7.4)."""
    if rec.get("version") != 1 or rec.get("kind") != "end_of_run":
        return ["is not a version-1 end-of-run record"]
    if public_key is not None:
        sig = rec.get("sig")
        try:
            ok = isinstance(sig, str) and len(sig) == 128 and verify_signature(public_key, bytes.fromhex(sig), _end_message(rec))
        except ValueError:
            ok = False
        if not ok:
            return ["has no valid coordinator signature (edited, or signed by another key)"]
    head = entry_hash(server[-1]) if server else GENESIS
    if rec.get("ledger_entries") != len(server) or rec.get("ledger_head") != head:
        return [f"closes the server ledger at {rec.get('ledger_entries')!r} entries (head {str(rec.get('ledger_head'))[:16]}…), "
                f"but it holds {len(server)} (head {head[:16]}…): entries were cut, added or rewritten"]
    recv = rec.get("views")
    if not isinstance(recv, dict):
        return ["has no view-ledger heads"]
    have = {str(h): es for h, es in views.items()}
    for h in sorted(set(recv) | set(have), key=lambda x: (len(x), x)):
        want, es = recv.get(h), have.get(h)
        if es is None or not isinstance(want, dict):
            return [f"and the view ledgers disagree on holder {h} (a view ledger removed or added)"]
        vh = entry_hash(es[-1]) if es else GENESIS
        if want.get("entries") != len(es) or want.get("head") != vh:
            return [f"closes holder {h}'s view ledger at {want.get('entries')!r} entries, but it holds {len(es)} "
                    "(or another head): entries were cut, added or rewritten"]
    return []
