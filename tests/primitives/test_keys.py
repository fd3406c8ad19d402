import json

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from securefed.primitives.keys import (IdentityKey, Roster, RosterError, X25519KeyPair, generate_identity,
                                       validate_x25519_public, verify_signature, x25519_shared)
from securefed.primitives.rng import DeterministicEntropy

h = bytes.fromhex


def test_rfc7748_scalarmult_vectors(published):
    for v in published["x25519_scalarmult"]:
        assert x25519_shared(X25519PrivateKey.from_private_bytes(h(v["scalar"])), h(v["u"])).hex() == v["out"]


def test_rfc7748_dh(published):
    v = published["x25519_dh"]
    alice, bob = X25519KeyPair.from_private_bytes(h(v["alice_private"])), X25519KeyPair.from_private_bytes(h(v["bob_private"]))
    assert alice.public.hex() == v["alice_public"] and bob.public.hex() == v["bob_public"]
    assert alice.shared(bob.public).hex() == bob.shared(alice.public).hex() == v["shared"]


def test_low_order_points_rejected(published):
    me = X25519KeyPair.generate(DeterministicEntropy.from_int(1))
    for u in published["x25519_low_order"]:
        with pytest.raises(ValueError, match="low-order"):
            validate_x25519_public(h(u))
        with pytest.raises(ValueError, match="all-zero"):  # cryptography refuses the all-zero secret
            me.shared(h(u))


def test_wrong_length_keys():
    with pytest.raises(ValueError, match="32 bytes"):
        validate_x25519_public(b"\x09" * 31)
    with pytest.raises(TypeError):
        validate_x25519_public("09" * 32)


def test_rfc8032_test1(published):
    v = published["ed25519"]
    k = IdentityKey.from_private_bytes(h(v["secret"]))
    assert k.public_bytes.hex() == v["public"]
    assert k.sign(h(v["message"])).hex() == v["signature"]
    assert verify_signature(k.public_bytes, h(v["signature"]), b"")
    assert not verify_signature(k.public_bytes, h(v["signature"]), b"x")
    assert not verify_signature(k.public_bytes, b"\x00" * 63, b"")


def test_identity_from_entropy_is_deterministic_and_secret_free_repr():
    a, b = generate_identity(DeterministicEntropy.from_int(5)), generate_identity(DeterministicEntropy.from_int(5))
    assert a.public_bytes == b.public_bytes
    assert a.private_bytes().hex() not in repr(a)


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
