"""protocols/ckks.md §3: context checks, pairwise key shares, labels, wire messages."""

from __future__ import annotations

import dataclasses

import pytest
import tenseal as ts

from securefed.ckks import ContextRejected, HolderSecrets, KeyShareError, RoutingPolicy
from securefed.ckks import keys
from securefed.ckks.holder import HolderRole
from securefed.ckks.keyshare import label, open_share, seal_share
from securefed.primitives.keys import X25519KeyPair
from securefed.ckks.messages import KeyShareMsg, MessageError, UploadMsg, decode, encode
from securefed.primitives.rng import DeterministicEntropy


@pytest.fixture(scope="module")
def leader_ctx(policy):
    return keys.generate_secret_context(policy)


@pytest.fixture(scope="module")
def pair():
    """Two fresh X25519 key pairs (holder 1 = leader, holder 2 = receiver)."""
    return X25519KeyPair.generate(DeterministicEntropy.from_int(1)), X25519KeyPair.generate(DeterministicEntropy.from_int(2))


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


def _seal(a, b, pt=b"secret", **kw):
    return seal_share(sender=1, sender_key=a, receiver=2, receiver_public=b.public, plaintext=pt, **{**SHARE, **kw})


def _open(a, b, blob, **kw):
    args = dict(receiver=2, receiver_key=b, sender=1, sender_public=a.public, blob=blob, **SHARE)
    return open_share(**{**args, **kw})


def test_key_share_round_trip(pair):
    a, b = pair
    blob = _seal(a, b)
    assert b"secret" not in blob
    assert _open(a, b, blob) == b"secret"


@pytest.mark.parametrize("field, value", [("generation", 4), ("round_index", 8), ("key_id", "cd" * 32)])
def test_key_share_bound_to_generation_round_and_key_id(pair, field, value):
    a, b = pair
    with pytest.raises(KeyShareError, match="^key share failed authentication$"):
        _open(a, b, _seal(a, b), **{field: value})


def test_key_share_bound_to_sender_and_receiver(pair):
    a, b = pair
    c = X25519KeyPair.generate(DeterministicEntropy.from_int(3))
    blob = _seal(a, b)
    with pytest.raises(KeyShareError):
        _open(a, b, blob, receiver=5)  # wrong receiver id
    with pytest.raises(KeyShareError):
        _open(a, c, blob)  # wrong receiver key
    with pytest.raises(KeyShareError):
        _open(a, b, blob, sender=4)  # wrong sender id
    with pytest.raises(KeyShareError):
        _open(c, b, blob)  # wrong claimed sender key
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(KeyShareError, match="^key share failed authentication$"):
        _open(a, b, tampered)


def test_low_order_x25519_point_is_refused(pair):
    a, b = pair
    zero = X25519KeyPair.generate(DeterministicEntropy.from_int(4))
    with pytest.raises(KeyShareError, match="X25519"):  # RFC 7748 §6.1: all-zero shared secret
        seal_share(sender=1, sender_key=a, receiver=2, receiver_public=b"\x00" * 32, plaintext=b"k", **SHARE)
    with pytest.raises(KeyShareError, match="X25519"):
        _open(a, zero, b"x" * 40, sender_public=(1).to_bytes(32, "little"))  # u = 1 has order 4


def test_signed_key_adverts_are_checked(policy):
    """§3.2: a leader seals only to adverts signed by the roster key for this generation."""
    roster_keys = {i: HolderSecrets.generate(i, DeterministicEntropy.from_int(50 + i)) for i in (1, 2, 3)}
    roster = {i: s.public() for i, s in roster_keys.items()}
    leader, good, forged = (HolderRole(roster_keys[i], policy) for i in (1, 2, 3))
    ent = DeterministicEntropy.from_int(77)
    leader.advertise(generation=1, round_index=0, entropy=ent)
    adv_good = good.advertise(generation=1, round_index=0, entropy=ent)
    adv_forged = dataclasses.replace(forged.advertise(generation=1, round_index=0, entropy=ent),
                                     x25519=X25519KeyPair.generate(ent).public)  # server swaps the key
    adv_stale = dataclasses.replace(adv_good, holder=3, generation=0)
    _, shares, refused = leader.make_keys(generation=1, round_index=0, roster=roster,
                                          adverts=[adv_good, adv_forged, adv_stale])
    assert [s.receiver for s in shares] == [2] and refused == {3}
    assert leader._eph is None  # fresh private key deleted once used


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


def test_holder_secrets_repr_hides_keys():
    assert repr(HolderSecrets.generate(1, DeterministicEntropy.from_int(1))) == "HolderSecrets(holder_id=1)"


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
