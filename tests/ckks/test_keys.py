"""protocols/ckks.md §3: context checks, pairwise key shares, labels, wire messages."""

from __future__ import annotations

import pytest
import tenseal as ts

from securefed.ckks import ContextRejected, HolderSecrets, KeyShareError, RoutingPolicy
from securefed.ckks import keys
from securefed.ckks.keyshare import label, open_share, seal_share
from securefed.ckks.messages import KeyShareMsg, MessageError, UploadMsg, decode, encode
from securefed.primitives.rng import DeterministicEntropy


@pytest.fixture(scope="module")
def leader_ctx(policy):
    return keys.generate_secret_context(policy)


@pytest.fixture(scope="module")
def pair():
    a = HolderSecrets.generate(1, DeterministicEntropy.from_int(1))
    b = HolderSecrets.generate(2, DeterministicEntropy.from_int(2))
    return a, b


def test_public_context_has_no_secret_and_loads(policy, leader_ctx):
    pub = keys.public_context_bytes(leader_ctx)
    ctx = keys.load_public_context(pub, policy)
    assert not ctx.has_secret_key() and ctx.is_public()
    assert keys.key_id_of(pub) == keys.key_id_of(keys.public_context_bytes(leader_ctx))  # deterministic


def test_server_loader_refuses_a_context_with_secret_key(policy, leader_ctx):
    with pytest.raises(ContextRejected, match="secret key"):
        keys.load_public_context(keys.secret_context_bytes(leader_ctx), policy)


@pytest.mark.parametrize(
    "other, match",
    [
        (RoutingPolicy(enabled=True, poly_modulus_degree=16384), "parameters differ"),
        (RoutingPolicy(enabled=True, coeff_mod_bit_sizes=(60, 40, 60), scale_bits=60), "parameters differ"),
        (RoutingPolicy(enabled=True, scale_bits=70), "scale"),
    ],
)
def test_loaders_refuse_unexpected_parameters(policy, other, match):
    ctx = keys.generate_secret_context(other)
    with pytest.raises(ContextRejected, match=match):
        keys.load_public_context(keys.public_context_bytes(ctx), policy)
    with pytest.raises(ContextRejected, match=match):
        keys.load_secret_context(keys.secret_context_bytes(ctx), policy)


def test_loaders_refuse_garbage_and_wrong_role(policy, leader_ctx):
    with pytest.raises(ContextRejected, match="not a valid"):
        keys.load_public_context(b"\x00" * 100, policy)
    with pytest.raises(ContextRejected, match="size"):
        keys.load_public_context(b"", policy)
    with pytest.raises(TypeError, match="public context"):
        keys.load_public_context("abc", policy)
    with pytest.raises(ContextRejected, match="no secret key"):
        keys.load_secret_context(keys.public_context_bytes(leader_ctx), policy)


def test_bfv_context_is_refused(policy):
    bfv = ts.context(ts.SCHEME_TYPE.BFV, 8192, 1032193)
    with pytest.raises(ContextRejected):
        keys.load_public_context(bfv.serialize(), policy)


SHARE = dict(generation=3, round_index=7, key_id="ab" * 32)


def test_key_share_round_trip(pair):
    a, b = pair
    blob = seal_share(sender=a, receiver=b.public(), plaintext=b"secret", entropy=DeterministicEntropy.from_int(9), **SHARE)
    assert b"secret" not in blob
    assert open_share(receiver=b, sender=a.public(), blob=blob, **SHARE) == b"secret"


@pytest.mark.parametrize("field, value", [("generation", 4), ("round_index", 8), ("key_id", "cd" * 32)])
def test_key_share_bound_to_generation_round_and_key_id(pair, field, value):
    a, b = pair
    blob = seal_share(sender=a, receiver=b.public(), plaintext=b"k", entropy=DeterministicEntropy.from_int(9), **SHARE)
    with pytest.raises(KeyShareError, match="^key share failed authentication$"):
        open_share(receiver=b, sender=a.public(), blob=blob, **{**SHARE, field: value})


def test_key_share_bound_to_sender_and_receiver(pair):
    a, b = pair
    c = HolderSecrets.generate(3, DeterministicEntropy.from_int(3))
    blob = seal_share(sender=a, receiver=b.public(), plaintext=b"k", entropy=DeterministicEntropy.from_int(9), **SHARE)
    with pytest.raises(KeyShareError):
        open_share(receiver=c, sender=a.public(), blob=blob, **SHARE)  # wrong receiver
    with pytest.raises(KeyShareError):
        open_share(receiver=b, sender=c.public(), blob=blob, **SHARE)  # wrong claimed sender
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(KeyShareError, match="^key share failed authentication$"):
        open_share(receiver=b, sender=a.public(), blob=tampered, **SHARE)


def test_low_order_x25519_point_is_refused(pair):
    a, _ = pair
    from securefed.ckks.keyshare import HolderPublic

    zero = HolderPublic(9, b"\x00" * 32, b"\x01" * 32)  # RFC 7748 §6.1: all-zero shared secret
    with pytest.raises(KeyShareError, match="X25519"):
        seal_share(sender=a, receiver=zero, plaintext=b"k", entropy=DeterministicEntropy.from_int(9), **SHARE)


def test_labels_are_domain_separated():
    # primitives.kdf.encode_info: label "/" purpose 0x00 u32(round) lp(field)...
    assert label("keyshare-key", round=2, generation=1, sender=3, receiver=4) == (
        b"securefed-ckks/v1/keyshare-key\x00\x00\x00\x00\x02"
        b"\x00\x00\x00\x0cgeneration=1\x00\x00\x00\x08sender=3\x00\x00\x00\x0areceiver=4"
    )
    assert label("keyshare-key", round=2, generation=1, sender=3, receiver=4) != label(
        "keyshare-ad", round=2, generation=1, sender=3, receiver=4)
    with pytest.raises(ValueError, match="purpose"):
        label("made-up", round=0, x=1)
    with pytest.raises(ValueError, match="field"):
        label("upload", round=0, key_id="\u00e9")


def test_holder_secrets_repr_hides_keys(pair):
    assert repr(pair[0]) == "HolderSecrets(holder_id=1)"


def test_messages_round_trip_and_reject_malformed():
    msg = UploadMsg(1, 2, 3, "ab", (b"x", b"yz"), b"s" * 64)
    wire = encode(msg)
    assert decode(wire) == msg
    for bad, match in [(wire[:-1], "truncated"), (wire + b"\x00", "trailing"), (b"XXXX" + wire[4:], "magic"),
                       (wire[:4] + b"\x09" + wire[5:], "version"), (wire[:5] + b"\x63" + wire[6:], "kind")]:
        with pytest.raises(MessageError, match=match):
            decode(bad)
    with pytest.raises(MessageError, match="generation"):
        KeyShareMsg(-1, 0, 0, 1, "ab", b"")
