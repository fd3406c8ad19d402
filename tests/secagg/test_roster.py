"""Roster file (protocols/secagg.md §9): round trip and strict validation."""

import json

import pytest

from securefed.primitives.rng import DeterministicEntropy
from securefed.secagg import Roster, RosterError, generate_identity


def _roster(n=3):
    return Roster.from_identities({i: generate_identity(DeterministicEntropy.from_int(i)) for i in range(1, n + 1)})


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_roster_round_trip(tmp_path, suffix):
    r = _roster()
    r.save(tmp_path / f"roster{suffix}")
    assert Roster.load(tmp_path / f"roster{suffix}") == r
    assert 2 in r and 9 not in r and r.public_key(1) == r.keys[1]


def _bad(data, tmp_path):
    p = tmp_path / "r.json"
    p.write_text(json.dumps(data))
    with pytest.raises(RosterError):
        Roster.load(p)


def test_roster_rejects_malformed(tmp_path):
    good = _roster().to_dict()
    k = good["holders"][0]["ed25519"]
    _bad({"holders": good["holders"]}, tmp_path)
    _bad({**good, "version": 2}, tmp_path)
    _bad({**good, "extra": 1}, tmp_path)
    _bad({"version": 1, "holders": [{"id": 1, "ed25519": k}, {"id": 1, "ed25519": good["holders"][1]["ed25519"]}]}, tmp_path)
    _bad({"version": 1, "holders": [{"id": 1, "ed25519": k}, {"id": 2, "ed25519": k}]}, tmp_path)  # shared key
    _bad({"version": 1, "holders": [{"id": 0, "ed25519": k}]}, tmp_path)
    _bad({"version": 1, "holders": [{"id": "1", "ed25519": k}]}, tmp_path)
    _bad({"version": 1, "holders": [{"id": 1, "ed25519": k[:-2]}]}, tmp_path)
    _bad({"version": 1, "holders": [{"id": 1, "ed25519": "zz" * 32}]}, tmp_path)
    _bad({"version": 1, "holders": [{"id": 1, "ed25519": k, "name": "x"}]}, tmp_path)
    (tmp_path / "r.yaml").write_text("holders: [")
    with pytest.raises(RosterError, match="parse"):
        Roster.load(tmp_path / "r.yaml")
    with pytest.raises(ValueError, match="not on the roster"):
        _roster().public_key(99)
