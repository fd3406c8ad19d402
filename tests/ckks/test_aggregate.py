"""protocols/ckks.md §4, §5: sums within the documented bound; bad uploads dropped, round continues."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest
import tenseal as ts

from securefed.ckks import CkksServer, RoutingPolicy, run_ckks_round, setup_keyring
from securefed.ckks import keys
from securefed.ckks.holder import upload_statement
from securefed.ckks.messages import AggregateMsg, UploadMsg, decode, encode

from ._ckks_util import entropy_for, vectors


L = 5000  # two ciphertexts at N = 8192 (4096 + 904 slots)


@pytest.mark.parametrize("n", [4, 10, 32])
def test_sum_within_documented_bound(policy, n):
    kr = setup_keyring(range(n), policy=policy, entropy_for=entropy_for)
    xs = vectors(n, L, bound=1.0, seed=n)
    out = run_ckks_round(xs, policy=policy, round_index=0, keyring=kr, entropy_for=entropy_for)
    err = np.max(np.abs(out.total - sum(xs.values())))
    # defaults: 8 * 2^-40 + n * (2^-64 + 2^-44) ~ 7.3e-12 + n * 5.7e-14 (protocols/ckks.md §4.4)
    assert err <= policy.error_bound(n, 1.0)
    assert err > 0  # flooding noise is really there
    assert out.survivors == frozenset(range(n)) and not out.rejected
    assert out.total.dtype == np.float64 and out.total.shape == (L,)


def test_bound_holds_at_scale_40_single_prime():
    pol = RoutingPolicy(enabled=True, coeff_mod_bit_sizes=(60, 60), scale_bits=40, decrypt_flood_bits=0)
    kr = setup_keyring(range(10), policy=pol, entropy_for=entropy_for)
    xs = vectors(10, 4096, bound=100.0, seed=3)
    out = run_ckks_round(xs, policy=pol, round_index=0, keyring=kr, entropy_for=entropy_for)
    assert np.max(np.abs(out.total - sum(xs.values()))) <= pol.error_bound(10, 100.0)


def flip_middle(b: bytes) -> bytes:
    return b[: len(b) // 2] + bytes([b[len(b) // 2] ^ 0x10]) + b[len(b) // 2 + 1:]


@pytest.mark.parametrize(
    "tamper",
    [flip_middle, lambda b: b[:-10], lambda b: b[:-1] + bytes([b[-1] ^ 1]), lambda b: b"junk", lambda b: b + b"\x00"],
    ids=["flip-ciphertext-byte", "truncate", "flip-signature", "garbage", "trailing"],
)
def test_tampered_upload_is_rejected_and_round_continues(policy, keyring4, tamper):
    xs = vectors(4, L, seed=1)
    out = run_ckks_round(xs, policy=policy, round_index=0, keyring=keyring4, entropy_for=entropy_for,
                         tamper={2: tamper})
    assert out.rejected == {2} and out.survivors == {0, 1, 3}
    assert np.max(np.abs(out.total - (xs[0] + xs[1] + xs[3]))) <= policy.error_bound(3, 1.0)


def _forge(kr, holder, round_index, cts, *, key_id=None, generation=None, cohort=range(4)):
    """An upload signed by ``holder`` itself for ``cohort`` (an authentic but malformed upload)."""
    role = kr.holder(holder)
    key_id = key_id or role.key_id
    generation = generation or role.generation
    sig = role.secrets.sign(upload_statement(round_index, generation, holder, key_id, cts, cohort))
    return encode(UploadMsg(round_index, generation, holder, key_id, tuple(cts), sig))


def _run_with_upload(policy, kr, bad_holder, make_cts, expect):
    """Round 0 with holder ``bad_holder``'s upload replaced by one built from make_cts(role ctx)."""
    xs = vectors(4, L, seed=2)
    server = CkksServer(policy, kr.roster)
    run_ckks_round(xs, policy=policy, round_index=0, keyring=kr, entropy_for=entropy_for, server=server)
    forged = _forge(kr, bad_holder, 1, make_cts(kr.holder(bad_holder)._ctx))
    out = run_ckks_round(xs, policy=policy, round_index=1, keyring=kr, entropy_for=entropy_for, server=server,
                         tamper={bad_holder: lambda _: forged})
    assert out.rejected == {bad_holder}
    assert expect in server.rejections[bad_holder]
    others = sum(v for h, v in xs.items() if h != bad_holder)
    assert np.max(np.abs(out.total - others)) <= policy.error_bound(3, 1.0)


def _rot1(policy):
    return dataclasses.replace(policy, rotate_key_every_rounds=10)


def test_wrong_scale_is_rejected(policy):
    pol = _rot1(policy)
    kr = setup_keyring(range(4), policy=pol, entropy_for=entropy_for)

    def cts(ctx):
        c = ctx.copy()
        c.global_scale = 2.0**70
        return [ts.ckks_vector(c, [0.0] * 4096).serialize(), ts.ckks_vector(c, [0.0] * 904).serialize()]

    _run_with_upload(pol, kr, 1, cts, "scale")


def test_wrong_size_is_rejected(policy):
    pol = _rot1(policy)
    kr = setup_keyring(range(4), policy=pol, entropy_for=entropy_for)
    _run_with_upload(pol, kr, 1, lambda c: [ts.ckks_vector(c, [0.0] * 4096).serialize(),
                                            ts.ckks_vector(c, [0.0] * 903).serialize()], "expected 904")
    kr = setup_keyring(range(4), policy=pol, entropy_for=entropy_for)
    _run_with_upload(pol, kr, 1, lambda c: [ts.ckks_vector(c, [0.0] * 4096).serialize()], "expected 2")


def test_wrong_level_is_rejected(policy):
    pol = _rot1(policy)
    kr = setup_keyring(range(4), policy=pol, entropy_for=entropy_for)

    def cts(ctx):
        c = ctx.copy()
        c.global_scale = 2.0**40  # so that a plaintext product fits; it then rescales one prime down
        low = ts.ckks_vector(c, [0.0] * 4096) * 1.0
        assert low.data.ciphertext()[0].coeff_modulus_size() == 1  # really at the next level
        return [low.serialize(), ts.ckks_vector(ctx, [0.0] * 904).serialize()]

    _run_with_upload(pol, kr, 0, cts, "level")


def test_ciphertext_under_other_parameters_is_rejected(policy):
    pol = _rot1(policy)
    kr = setup_keyring(range(4), policy=pol, entropy_for=entropy_for)
    other = keys.generate_secret_context(RoutingPolicy(enabled=True, poly_modulus_degree=16384))
    _run_with_upload(pol, kr, 3, lambda c: [ts.ckks_vector(other, [0.0] * 4096).serialize(),
                                            ts.ckks_vector(other, [0.0] * 904).serialize()], "not a valid CKKS vector")


def test_upload_under_a_stale_key_generation_is_rejected(policy):
    kr = setup_keyring(range(4), policy=policy, entropy_for=entropy_for)  # rotates every round
    xs = vectors(4, L, seed=4)
    server = CkksServer(policy, kr.roster)
    run_ckks_round(xs, policy=policy, round_index=0, keyring=kr, entropy_for=entropy_for, server=server)
    old = encode(kr.holder(2).encrypt(1, xs[2], cohort=range(4)))  # made with generation 1's key
    out = run_ckks_round(xs, policy=policy, round_index=1, keyring=kr, entropy_for=entropy_for, server=server,
                         tamper={2: lambda _: old})
    assert kr.generation == 2 and out.rejected == {2}
    assert "another key" in server.rejections[2]


def test_replayed_upload_from_previous_round_is_rejected(policy):
    pol = _rot1(policy)
    kr = setup_keyring(range(4), policy=pol, entropy_for=entropy_for)
    xs = vectors(4, L, seed=5)
    server = CkksServer(pol, kr.roster)
    captured = {}
    run_ckks_round(xs, policy=pol, round_index=0, keyring=kr, entropy_for=entropy_for, server=server,
                   tamper={1: lambda b: captured.setdefault(1, b)})
    out = run_ckks_round(xs, policy=pol, round_index=1, keyring=kr, entropy_for=entropy_for, server=server,
                         tamper={1: lambda _: captured[1]})
    assert out.rejected == {1} and "round 0" in server.rejections[1]


def test_upload_relabelled_as_another_holder_is_rejected(policy, keyring4):
    xs = vectors(4, L, seed=6)
    stolen = {}
    server = CkksServer(policy, keyring4.roster)
    out = run_ckks_round(xs, policy=policy, round_index=0, keyring=keyring4, entropy_for=entropy_for,
                         server=server, tamper={0: lambda b: stolen.setdefault(0, b), 1: lambda b: stolen[0]})
    # holders upload in id order, so holder 1's slot carried holder 0's upload
    assert out.rejected == {1} and "not an upload from this holder" in server.rejections[1]


def test_server_rejects_duplicate_and_outsider(policy, keyring4):
    xs = vectors(4, L, seed=7)
    server = CkksServer(policy, keyring4.roster)
    run_ckks_round(xs, policy=policy, round_index=0, keyring=keyring4, entropy_for=entropy_for, server=server)
    server.begin_round(1, frozenset({0, 1}), L)
    up = encode(keyring4.holder(0).encrypt(1, xs[0], cohort={0, 1}))
    server.receive_upload(0, up)
    from securefed.ckks import UploadRejected

    with pytest.raises(UploadRejected, match="second upload"):
        server.receive_upload(0, up)
    with pytest.raises(UploadRejected, match="cohort"):
        server.receive_upload(3, encode(keyring4.holder(3).encrypt(1, xs[3], cohort={0, 1, 3})))


def test_all_rejected_gives_empty_outcome(policy, keyring4):
    xs = vectors(4, L, seed=8)
    out = run_ckks_round(xs, policy=policy, round_index=0, keyring=keyring4, entropy_for=entropy_for,
                         tamper={h: (lambda b: b"x") for h in range(4)})
    assert out.survivors == frozenset() and out.rejected == {0, 1, 2, 3} and not out.total.any()


def test_below_min_survivors_the_decryptor_refuses(policy):
    kr = setup_keyring(range(2), policy=policy, entropy_for=entropy_for)
    with pytest.raises(ValueError, match="min_survivors"):
        run_ckks_round(vectors(2, 10), policy=policy, round_index=0, keyring=kr, entropy_for=entropy_for,
                       tamper={1: lambda b: b"x"})


def test_decryptor_refuses_an_aggregate_that_is_one_holders_ciphertext(policy, keyring4):
    """A lying server claims survivors {0, 1} but hands over holder 0's upload twice (§5.3)."""
    xs = vectors(4, L, seed=9)
    captured = {}
    run_ckks_round(xs, policy=policy, round_index=0, keyring=keyring4, entropy_for=entropy_for,
                   tamper={0: lambda b: captured.setdefault(0, b)})
    bad = AggregateMsg(0, keyring4.generation, keyring4.key_id, (0, 1), (), (captured[0], captured[0]))
    decryptor = copy.copy(keyring4.holder(0))   # holder 0 (min of the cohort) already released round 0's sum:
    decryptor._released = set()                  # the checks under test come after that D4 record
    with pytest.raises(ValueError, match="not from that holder"):
        decryptor.decrypt(bad, length=L, cohort=frozenset(range(4)), roster=keyring4.roster, entropy=entropy_for(0))
    lonely = AggregateMsg(0, keyring4.generation, keyring4.key_id, (0,), (), (captured[0],))
    with pytest.raises(ValueError, match="min_survivors"):
        decryptor.decrypt(lonely, length=L, cohort=frozenset(range(4)), roster=keyring4.roster, entropy=entropy_for(0))


def test_unverified_mode_sums_on_the_server(policy):
    pol = dataclasses.replace(policy, verify_aggregate=False)
    kr = setup_keyring(range(4), policy=pol, entropy_for=entropy_for)
    xs = vectors(4, L, seed=10)
    out = run_ckks_round(xs, policy=pol, round_index=0, keyring=kr, entropy_for=entropy_for,
                         tamper={3: flip_middle})
    assert out.rejected == {3}
    assert np.max(np.abs(out.total - (xs[0] + xs[1] + xs[2]))) <= pol.error_bound(3, 1.0)


def test_input_checks_fail_closed(policy, keyring4):
    with pytest.raises(ValueError, match="capacity"):
        run_ckks_round({h: np.full(10, 2.0**37) for h in range(4)}, policy=policy, round_index=0,
                       keyring=keyring4, entropy_for=entropy_for)
    with pytest.raises(ValueError, match="non-finite"):
        keyring4.holder(0).encrypt(0, np.array([np.nan]), cohort=range(4))
    with pytest.raises(ValueError, match="one length"):
        run_ckks_round({0: np.zeros(3), 1: np.zeros(4)}, policy=policy, round_index=0, keyring=keyring4,
                       entropy_for=entropy_for)
    with pytest.raises(ValueError, match="disabled"):
        off = RoutingPolicy()
        run_ckks_round({0: np.zeros(3)}, policy=off, round_index=0,
                       keyring=setup_keyring([0], policy=off, entropy_for=entropy_for), entropy_for=entropy_for)
    with pytest.raises(ValueError, match="roster"):
        run_ckks_round({9: np.zeros(3)}, policy=policy, round_index=0, keyring=keyring4, entropy_for=entropy_for)


def test_plan_split_round_merge_matches_the_plaintext_sum(policy):
    """The runtime's path: split each flat update, CKKS-sum the small part, merge with the other part."""
    from securefed.ckks import plan_routes

    shapes = [("embed", (500, 32)), ("l0.norm", (32,)), ("l0.q", (32, 200)), ("l0.bias", (200,)), ("norm", (32,))]
    plan = plan_routes(shapes, policy)
    assert plan.ckks_size == 264 and plan.secagg_size == 16000 + 6400
    rng = np.random.default_rng(11)
    flats = {h: rng.uniform(-0.5, 0.5, plan.total_size) for h in range(3)}
    kr = setup_keyring(range(3), policy=policy, entropy_for=entropy_for)
    out = run_ckks_round({h: plan.split(f)[0] for h, f in flats.items()}, policy=policy, round_index=0,
                         keyring=kr, entropy_for=entropy_for)
    other = sum(plan.split(f)[1] for f in flats.values())  # stands in for the secure-aggregation sum
    total = plan.merge(out.total, other)
    assert np.max(np.abs(total - sum(flats.values()))) <= policy.error_bound(3, 0.5)


def test_entropy_for_is_called_once_per_holder_per_round(policy):
    """Fresh X25519 keys and flooding noise come from one stream per holder, used sequentially."""
    calls: list[int] = []

    def counting(h):
        calls.append(h)
        return entropy_for(h)

    kr = setup_keyring(range(4), policy=policy, entropy_for=entropy_for)
    run_ckks_round(vectors(4, 10), policy=policy, round_index=0, keyring=kr, entropy_for=counting)
    assert sorted(calls) == [0, 1, 2, 3]  # 4 adverts; the decryptor (0) reuses its stream


def test_only_the_cohorts_smallest_member_decrypts_and_only_uploads_made_for_that_cohort(policy, keyring4):
    """D5 (audit SEC-15): every key holder holds the secret key, so a server that could name another
    decryptor, or mix uploads made for different cohorts, would get two sums of one round and their
    difference — one holder's slice. Holder 1 is not min(cohort); an upload signed for {0, 1, 2, 3}
    does not verify as part of a sum over {1, 2, 3}."""
    xs = vectors(4, L, seed=11)
    captured = {}
    run_ckks_round(xs, policy=policy, round_index=0, keyring=keyring4, entropy_for=entropy_for,
                   tamper={h: (lambda b, h=h: captured.setdefault(h, b)) for h in range(4)})
    subset = AggregateMsg(0, keyring4.generation, keyring4.key_id, (1, 2, 3), (), tuple(captured[h] for h in (1, 2, 3)))
    with pytest.raises(ValueError, match="not the decryptor"):
        keyring4.holder(1).decrypt(subset, length=L, cohort=frozenset({1, 2, 3}) | {0}, roster=keyring4.roster,
                                   entropy=entropy_for(1))
    with pytest.raises(ValueError, match="failed authentication"):   # uploads were signed for {0, 1, 2, 3}
        keyring4.holder(1).decrypt(subset, length=L, cohort=frozenset({1, 2, 3}), roster=keyring4.roster,
                                   entropy=entropy_for(1))
