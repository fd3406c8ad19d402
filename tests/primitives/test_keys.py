import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from securefed.primitives.keys import (IdentityKey, X25519KeyPair, generate_identity, validate_x25519_public,
                                       verify_signature, x25519_shared)
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
