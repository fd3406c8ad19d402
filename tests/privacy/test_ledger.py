"""Hash-chained ledger: append, verify, and detection of every kind of tampering."""

import json
import math

import pytest

from securefed.privacy.ledger import GENESIS, Ledger, LedgerError, canonical_json, entry_hash, read_ledger


def _make(path, n=4):
    led = Ledger(path)
    for r in range(n):
        led.append({"round": r, "epsilon": 0.5 * (r + 1), "mechanism": "ddgauss"})
    return led


def test_chain_links_each_entry_to_the_previous(tmp_path):
    led = _make(tmp_path / "l.jsonl")
    entries = read_ledger(tmp_path / "l.jsonl")
    assert [e["seq"] for e in entries] == [0, 1, 2, 3]
    assert entries[0]["prev_hash"] == GENESIS
    for a, b in zip(entries, entries[1:]):
        assert b["prev_hash"] == entry_hash(a)
    assert led.head == entry_hash(entries[-1]) and led.head_at(0) == GENESIS


def test_infinite_epsilon_round_trips(tmp_path):
    led = Ledger(tmp_path / "l.jsonl")
    led.append({"epsilon": math.inf})
    assert read_ledger(tmp_path / "l.jsonl")[0]["epsilon"] == "inf"


def _lines(p):
    return p.read_text().splitlines(keepends=True)


@pytest.mark.parametrize("how", ["edit_value", "edit_reencoded", "delete", "swap", "truncate", "bad_json"])
def test_tampering_is_detected(tmp_path, how):
    p = tmp_path / "l.jsonl"
    _make(p)
    lines = _lines(p)
    if how == "edit_value":  # change epsilon of entry 1 in place (non-canonical edit is caught too)
        lines[1] = lines[1].replace('"epsilon":1.0', '"epsilon":0.1')
    elif how == "edit_reencoded":  # rewrite entry 1 canonically: caught by entry 2's prev_hash
        e = json.loads(lines[1])
        e["epsilon"] = 0.01
        lines[1] = canonical_json(e) + "\n"
    elif how == "delete":
        del lines[2]
    elif how == "swap":
        lines[1], lines[2] = lines[2], lines[1]
    elif how == "truncate":
        lines[-1] = lines[-1][:20]
    else:
        lines[0] = "{not json\n"
    p.write_text("".join(lines))
    with pytest.raises(LedgerError):
        read_ledger(p)
    with pytest.raises(LedgerError):
        Ledger(p)


def test_editing_the_last_entry_is_caught_by_the_anchor(tmp_path):
    p = tmp_path / "l.jsonl"
    head = _make(p).head
    lines = _lines(p)
    e = json.loads(lines[-1])
    e["epsilon"] = 0.0
    lines[-1] = canonical_json(e) + "\n"
    p.write_text("".join(lines))
    assert Ledger(p).head != head  # the checkpoint/report anchor no longer matches


def test_append_refuses_reserved_fields(tmp_path):
    with pytest.raises(ValueError, match="seq"):
        Ledger(tmp_path / "l.jsonl").append({"seq": 3})
    with pytest.raises(LedgerError, match="NaN"):
        Ledger(tmp_path / "l.jsonl").append({"epsilon": math.nan})


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 6), line=st.integers(0, 5), pos=st.integers(0, 10_000), byte=st.integers(33, 126))
def test_any_single_character_change_is_detected(tmp_path_factory, n, line, pos, byte):
    p = tmp_path_factory.mktemp("l") / "l.jsonl"
    anchor = _make(p, n).head
    lines = _lines(p)
    i = line % n
    body = lines[i][:-1]
    j = pos % len(body)
    if body[j] == chr(byte):
        return
    lines[i] = body[:j] + chr(byte) + body[j + 1:] + "\n"
    p.write_text("".join(lines))
    head_before = None
    try:
        led = Ledger(p)
        head_before = led.head
    except LedgerError:
        return  # detected by the chain or the canonical-form check
    # only an edit of the last line that stays canonical JSON can pass the chain: the anchor catches it
    assert i == n - 1 and head_before != anchor


def test_signed_ledger_refuses_unsigned_or_forged_entries(tmp_path):
    from securefed.primitives.keys import generate_identity
    from securefed.primitives.rng import DeterministicEntropy
    from securefed.privacy.ledger import SIGNATURE_LABEL, entry_signature_ok, signed_message

    key = generate_identity(DeterministicEntropy.from_int(1))
    other = generate_identity(DeterministicEntropy.from_int(2))
    p = tmp_path / "l.jsonl"
    led = Ledger(p, signer=key)
    for r in range(1, 4):
        led.append({"round": r, "epsilon": 0.5 * r})
    es = read_ledger(p, public_key=key.public_bytes)
    assert all(entry_signature_ok(e, key.public_bytes) for e in es)
    assert signed_message(es[0]).startswith(SIGNATURE_LABEL)  # domain-separated
    assert es[1]["prev_hash"] == entry_hash(es[0]) and "sig" in es[0]  # the chain covers the signature
    assert Ledger(p, public_key=key.public_bytes).head == led.head
    with pytest.raises(LedgerError, match="entry 0 .*invalid signature"):
        Ledger(p, public_key=other.public_bytes)
    with pytest.raises(ValueError, match="not the signer"):
        Ledger(p, signer=key, public_key=other.public_bytes)
    with pytest.raises(ValueError, match="sig"):
        led.append({"round": 9, "sig": "00"})
    # the last entry re-signed by another key, or stripped of its signature: refused, naming it
    lines = _lines(p)
    e = json.loads(lines[-1])
    e["sig"] = other.sign(signed_message(e)).hex()
    p.write_text("".join(lines[:-1]) + canonical_json(e) + "\n")
    with pytest.raises(LedgerError, match="entry 2 .*invalid signature"):
        Ledger(p, signer=key)
    del e["sig"]
    p.write_text("".join(lines[:-1]) + canonical_json(e) + "\n")
    with pytest.raises(LedgerError, match="entry 2 .*not signed"):
        read_ledger(p, public_key=key.public_bytes)
    assert len(read_ledger(p)) == 3  # without a key only the chain is checked (what verify reports as UNSIGNED)


_FULL_DISK = r'''
import os, resource, sys
from securefed.privacy.ledger import Ledger, LedgerWriteError, read_ledger
path = sys.argv[1]
led = Ledger(path)
led.append({"round": 1, "pad": "a" * 500})
size = os.path.getsize(path)
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (size + 300, hard))   # the kernel writes 300 bytes of the next line, then stops
try:
    led.append({"round": 2, "pad": "b" * 2000})
except LedgerWriteError as e:
    print("REFUSED", e)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
print("SIZE", size, os.path.getsize(path))
led.append({"round": 3})                                            # the same process goes on once the disk has room
print("ROUNDS", [e["round"] for e in read_ledger(path)])
'''


def test_an_append_the_disk_cuts_short_leaves_the_ledger_as_it_was(tmp_path):
    """A full disk (here a real file-size limit: the kernel writes part of the line and then refuses) must not leave a
    torn line: the append raises LedgerWriteError naming the file, the file is cut back to its last whole entry, and
    the next append extends an intact chain. (Before: a torn line stayed, `securefed` refused the ledger as torn, and
    a process that appended again wrote after the fragment: "line 2 is not valid JSON", mid-file.)"""
    import subprocess
    import sys

    p = tmp_path / "l.jsonl"
    out = subprocess.run([sys.executable, "-c", _FULL_DISK, str(p)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert "could not be appended" in lines["REFUSED"] and str(p) in lines["REFUSED"] and "unchanged" in lines["REFUSED"]
    before, after = lines["SIZE"].split()
    assert before == after
    assert lines["ROUNDS"] == "[1, 3]"
    assert [e["round"] for e in read_ledger(p)] == [1, 3]
