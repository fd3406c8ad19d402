"""One negative test per MUST rule of protocols/secagg.md §6.1 (client) and §6.2 (server)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from securefed.primitives import shamir
from securefed.primitives.keys import X25519KeyPair
from securefed.primitives.rng import DeterministicEntropy
from securefed.secagg import SecAggAborted, SecAggConfig, UnexpectedMessage, decode, encode, generate_identity
from securefed.secagg import common as cm
from securefed.secagg.client import ClientStage
from securefed.secagg.messages import AdvertiseKeys, KIND_B, UnmaskShares

from tests.secagg.helpers import Harness, ring_sum

replace = dataclasses.replace


def aborts(h, i, msg, match):
    with pytest.raises(SecAggAborted, match=match):
        h.clients[i].handle(encode(msg))
    assert h.clients[i].stage is ClientStage.ABORTED
    assert h.clients[i]._b is None and h.clients[i]._s is None  # C10: secrets erased


# ---- C1: RoundStart ---------------------------------------------------------------------------
@pytest.mark.parametrize("change,match", [
    (dict(context=b"other model"), "global-model hash"),
    (dict(round_index=5), "round"),
    (dict(ring_bits=16), "ring bits"),
    (dict(length=9), "length"),
    (dict(cohort=(2, 3, 4, 5, 6, 7), degree=5), "cohort"),
    (dict(cohort=(1, 2, 3, 4, 5, 6, 7, 99)), "cohort"),
    (dict(threshold=2, min_survivors=2), "thresholds"),
    (dict(cohort=(1, 2), threshold=2, min_survivors=2, degree=1), "too small"),
])
def test_c1_round_start_checked(change, match):
    h = Harness()
    aborts(h, 1, replace(h.message_for(1), **change), match)


def test_c1_client_with_other_model_hash_refuses():
    h = Harness(client_ctx={3: b"stale model"})
    with pytest.raises(SecAggAborted, match="global-model hash"):
        h.clients[3].handle(h.outbox[3])


# ---- C2: KeyRoster ----------------------------------------------------------------------------
def test_c2_key_substitution_detected():
    h = Harness().steps(1)
    roster = h.message_for(1)
    attacker = X25519KeyPair.generate(DeterministicEntropy.from_int(666)).public
    adverts = tuple(replace(a, s_public=attacker) if a.sender == 2 else a for a in roster.adverts)
    aborts(h, 1, replace(roster, adverts=adverts), "does not verify")


def test_c2_sybil_beyond_roster_rejected():
    h = Harness().steps(1)
    roster = h.message_for(1)
    sybil = generate_identity(DeterministicEntropy.from_int(4242))
    c, s = (X25519KeyPair.generate(DeterministicEntropy.from_int(k)).public for k in (1, 2))
    commit = b"\x00" * 32
    sig = sybil.sign(cm.advert_message(h.clients[1]._phash, 8, c, s, commit))
    aborts(h, 1, replace(roster, adverts=roster.adverts + (AdvertiseKeys(8, c, s, commit, sig),)), "outside the cohort")


def test_c2_sybil_with_roster_id_but_own_key_rejected():
    h = Harness().steps(1)
    roster = h.message_for(1)
    sybil = generate_identity(DeterministicEntropy.from_int(4243))
    a = roster.adverts[1]
    forged = replace(a, signature=sybil.sign(cm.advert_message(h.clients[1]._phash, a.sender, a.c_public, a.s_public, a.commitment)))
    aborts(h, 1, replace(roster, adverts=(roster.adverts[0], forged) + roster.adverts[2:]), "does not verify")


def test_c2_replay_of_earlier_round_rejected():
    old = Harness(round_index=0).steps(1)
    new = Harness(round_index=1).steps(1)
    stale = next(a for a in old.message_for(1).adverts if a.sender == 2)
    roster = new.message_for(1)
    adverts = tuple(stale if a.sender == 2 else a for a in roster.adverts)
    aborts(new, 1, replace(roster, adverts=adverts), "does not verify")


def test_c2_own_advert_must_be_echoed():
    h = Harness().steps(1)
    roster = h.message_for(1)
    aborts(h, 1, replace(roster, adverts=roster.adverts[1:]), "echoed")


def test_c2_an_advertisement_signed_with_our_own_key_that_is_not_ours_means_our_identity_is_in_use():
    """Two processes with holder 1's identity key in one round: the roster echoes the other one's advertisement, signed
    with our key for this round's params_hash (no server can forge it). IdentityInUse (a SecAggAborted): the holder
    stops instead of dropping out of the round as from any other abort (transport.md §10, exit 9)."""
    from securefed.secagg import IdentityInUse

    h = Harness().steps(1)
    roster = h.message_for(1)
    mine = roster.adverts[0]
    c, s = (X25519KeyPair.generate(DeterministicEntropy.from_int(k)).public for k in (11, 12))
    theirs = AdvertiseKeys(1, c, s, mine.commitment, h.ids[1].sign(cm.advert_message(h.clients[1]._phash, 1, c, s,
                                                                                     mine.commitment)))
    with pytest.raises(IdentityInUse, match="another process is taking part as holder 1"):
        h.clients[1].handle(encode(replace(roster, adverts=(theirs,) + roster.adverts[1:])))
    assert h.clients[1].stage is ClientStage.ABORTED and h.clients[1]._b is None   # C10: secrets erased


def test_c2_duplicate_and_low_order_keys():
    h = Harness().steps(1)
    roster = h.message_for(1)
    # holder 2 (malicious) signs an advertisement that copies 3's key: every honest client aborts
    a2, a3 = roster.adverts[1], roster.adverts[2]
    copy = replace(a2, s_public=a3.s_public)
    copy = replace(copy, signature=h.ids[2].sign(cm.advert_message(h.clients[1]._phash, 2, copy.c_public, copy.s_public, copy.commitment)))
    aborts(h, 1, replace(roster, adverts=(roster.adverts[0], copy) + roster.adverts[2:]), "duplicate")
    h = Harness().steps(1)
    roster = h.message_for(1)
    low = replace(roster.adverts[1], s_public=b"\x01" + b"\x00" * 31)
    low = replace(low, signature=h.ids[2].sign(cm.advert_message(h.clients[1]._phash, 2, low.c_public, low.s_public, low.commitment)))
    aborts(h, 1, replace(roster, adverts=(roster.adverts[0], low) + roster.adverts[2:]), "low-order")


def test_c2_too_few_advertisements():
    h = Harness(n=7).steps(1)  # t_min = 4
    roster = h.message_for(1)
    aborts(h, 1, replace(roster, adverts=roster.adverts[:3]), "fewer than t_min")


# ---- C3: ForwardedShares ----------------------------------------------------------------------
def test_c3_shares_from_non_neighbour_rejected():
    h = Harness(n=10, config=SecAggConfig(neighbours=4)).steps(2)
    fwd = h.message_for(1)
    outsider = next(j for j in range(2, 11) if j not in h.clients[1]._graph.neighbours(1))
    aborts(h, 1, replace(fwd, ciphertexts=tuple(sorted(fwd.ciphertexts + ((outsider, fwd.ciphertexts[0][1]),)))), "neighbour")


def test_c3_too_few_senders():
    h = Harness(n=7).steps(2)  # t = 4
    fwd = h.message_for(1)
    aborts(h, 1, replace(fwd, ciphertexts=fwd.ciphertexts[:2]), "fewer than t")


def test_c3_garbled_ciphertext_means_share_not_held_but_round_still_sums():
    h = Harness(n=7).steps(2)
    def tamper(i, data):
        m = decode(data)
        if i == 1:
            j, ct = m.ciphertexts[0]
            m = replace(m, ciphertexts=((j, bytes(len(ct))),) + m.ciphertexts[1:])
        return encode(m)
    h.step(tamper=tamper)
    h.steps(2)
    assert np.array_equal(h.server.result, ring_sum(h.inputs, range(1, 8)))
    assert 2 not in h.clients[1].revealed  # it never held 2's share


# ---- C5: SurvivorList -------------------------------------------------------------------------
@pytest.mark.parametrize("survivors,match", [((2, 3, 4, 5, 6, 7), "omits us"), ((1, 2, 3, 4, 5, 6, 7, 9), "unknown"),
                                             ((1, 2, 3), "fewer than t_min")])
def test_c5_survivor_list_checked(survivors, match):
    h = Harness(n=7).steps(3)
    aborts(h, 1, replace(h.message_for(1), survivors=survivors), match)


# ---- C6–C9: UnmaskRequest ---------------------------------------------------------------------
def _unmask_harness(drop_at_mask=(6,)):
    h = Harness(n=7).steps(2)
    h.step(skip=drop_at_mask)
    h.step()
    return h


def test_c6_alive_must_equal_signed_survivors():
    h = _unmask_harness()
    req = h.message_for(1)
    aborts(h, 1, replace(req, alive=req.alive[:-1]), "differs")


def test_c7_lying_server_alive_and_dropped_overlap():
    h = _unmask_harness()
    req = h.message_for(1)  # the server would get b_2 and s_2 if honest holders answered both
    aborts(h, 1, replace(req, dropped=tuple(sorted(req.dropped + (2,)))), "both alive and dropped")


def test_c7_self_listed_as_dropped():
    h = _unmask_harness()
    req = h.message_for(1)
    aborts(h, 1, replace(req, dropped=tuple(sorted(req.dropped + (1,)))), "listed as dropped")


def test_c7_dropped_must_be_known():
    h = _unmask_harness()
    req = h.message_for(1)
    aborts(h, 1, replace(req, dropped=req.dropped + (42,)), "never advertised")


def test_c8_consistency_signatures_checked():
    h = _unmask_harness()
    req = h.message_for(1)
    bad = tuple((j, bytes(64)) if j == 3 else (j, s) for j, s in req.signatures)
    aborts(h, 1, replace(req, signatures=bad), "invalid consistency signature")
    h = _unmask_harness()
    req = h.message_for(1)
    aborts(h, 1, replace(req, signatures=req.signatures[:3]), "fewer than t_min")


def test_c8_signature_over_other_survivor_set_rejected():
    h = _unmask_harness()
    req = h.message_for(1)
    other = cm.consistency_message(h.clients[1]._sid, (1, 2, 3, 4, 5))
    sigs = tuple((j, h.ids[j].sign(other) if j == 2 else s) for j, s in req.signatures)
    aborts(h, 1, replace(req, signatures=sigs), "invalid consistency signature")


def test_c9_double_unmask_request_refused_and_one_kind_per_peer():
    h = _unmask_harness()
    req = h.outbox[1]
    reply = decode(h.clients[1].handle(req))
    kinds = {j: k for j, k, _ in reply.shares}
    assert kinds[6] == 1 and all(k == KIND_B for j, k in kinds.items() if j != 6)  # s-share only for the dropped one
    assert h.clients[1].stage is ClientStage.DONE and h.clients[1]._held is None
    with pytest.raises(UnexpectedMessage):
        h.clients[1].handle(req)  # second request for the same peers: nothing more is revealed


# ---- server rules ------------------------------------------------------------------------------
def test_s1_outsiders_spoofed_senders_and_duplicates():
    h = Harness(n=7)
    a1 = h.clients[1].handle(h.outbox[1])
    h.server.receive(99, a1)          # not in the cohort: ignored
    h.server.receive(2, a1)           # sender field (1) != transport identity (2): 2 is dropped
    h.server.receive(1, a1)
    h.server.receive(1, a1)           # duplicate: the first stands
    assert h.server.offenders == {2}
    for i in range(3, 8):
        h.server.receive(i, h.clients[i].handle(h.outbox[i]))
    out = h.server.close_stage()
    assert sorted(out) == [1, 3, 4, 5, 6, 7]


def test_s2_server_rejects_bad_signature_other_model_and_replay():
    old = Harness(round_index=0)
    stale = old.clients[4].handle(old.outbox[4])
    h = Harness(round_index=1, client_ctx={3: b"another model"})
    for i in (1, 2, 5, 6, 7):
        h.server.receive(i, h.clients[i].handle(h.outbox[i]))
    other = replace(decode(h.outbox[3]), context=b"another model")  # a split-view server lied to holder 3
    h.server.receive(3, h.clients[3].handle(encode(other)))
    h.server.receive(4, stale)  # replay from round 0
    assert h.server.offenders == {3, 4}


def test_s2_duplicate_keys_drop_all_owners():
    h = Harness(n=7)
    replies = {i: h.clients[i].handle(h.outbox[i]) for i in h.ids}
    a2, a3 = decode(replies[2]), decode(replies[3])
    copy = replace(a3, c_public=a2.c_public)
    copy = replace(copy, signature=h.ids[3].sign(cm.advert_message(h.clients[3]._phash, 3, copy.c_public, copy.s_public, copy.commitment)))
    replies[3] = encode(copy)
    for i, r in replies.items():
        h.server.receive(i, r)
    assert sorted(h.server.close_stage()) == [1, 4, 5, 6, 7]


def test_s3_s4_s5_s6_invalid_messages_drop_the_sender():
    h = Harness(n=7).steps(1)
    replies = {i: h.clients[i].handle(h.outbox[i]) for i in h.ids}
    sk = decode(replies[2])
    replies[2] = encode(replace(sk, ciphertexts=sk.ciphertexts[1:]))  # S3: a receiver missing
    for i, r in replies.items():
        h.server.receive(i, r)
    h.outbox = h.server.close_stage()
    assert 2 in h.server.offenders
    replies = {i: h.clients[i].handle(h.outbox[i]) for i in h.outbox}
    m3 = decode(replies[3])
    replies[3] = encode(replace(m3, vector=m3.vector[:-1].copy()))  # S4: wrong length
    m4 = decode(replies[4])
    replies[4] = encode(replace(m4, ring_bits=20, vector=(m4.vector & np.uint32(0xFFFFF)).copy()))  # S4: wrong ring
    for i, r in replies.items():
        h.server.receive(i, r)
    h.outbox = h.server.close_stage()
    assert {3, 4} <= h.server.offenders and h.server.u3 == (1, 5, 6, 7)
    replies = {i: h.clients[i].handle(h.outbox[i]) for i in h.outbox}
    replies[5] = encode(replace(decode(replies[5]), signature=bytes(64)))  # S5: bad consistency signature
    for i, r in replies.items():
        h.server.receive(i, r)
    with pytest.raises(SecAggAborted, match="signed"):  # only 3 valid signatures < t_min = 4
        h.server.close_stage()
    assert h.server.total is None


def test_s5_wrong_share_kind_drops_holder():
    h = _unmask_harness()
    replies = {i: h.clients[i].handle(h.outbox[i]) for i in h.outbox}
    m = decode(replies[1])
    replies[1] = encode(UnmaskShares(1, tuple((j, 1 - k, s) if j == 2 else (j, k, s) for j, k, s in m.shares)))
    for i, r in replies.items():
        h.server.receive(i, r)
    h.server.close_stage()
    assert 1 in h.server.offenders
    assert np.array_equal(h.server.result, ring_sum(h.inputs, (1, 2, 3, 4, 5, 7)))


def _unmask_replies(h, corrupt):
    """Every member of U4 answers the UnmaskRequest; ``corrupt(sender, peer)`` says which shares are sent wrong."""
    rng = np.random.default_rng(5)   # a random wrong value: +1 everywhere can cancel (λ_1 + λ_3 = 0 over {1, 3, 5, 7})
    bump = lambda s: ((int.from_bytes(s, "big") + int(rng.integers(1, 2**62))) % shamir.PRIME).to_bytes(66, "big")
    replies = {}
    for i in h.outbox:
        m = decode(h.clients[i].handle(h.outbox[i]))
        replies[i] = encode(UnmaskShares(i, tuple((j, k, bump(s) if corrupt(i, j) else s) for j, k, s in m.shares)))
    return replies


def test_s7_a_holder_sending_wrong_unmask_shares_cannot_abort_the_round_or_change_the_sum():
    """§6.4 (threat SA-21): holder 1 — the lowest x, whose shares the first t would include — sends every unmasking
    share wrong (b-shares of the survivors, s-share of the dropped holder 6). The server finds t shares that pass
    their checks (commit_i, s_j^PK) without it: the sum is exactly Σ_{U3} x_i, and holder 1 is named."""
    h = _unmask_harness()
    for i, r in _unmask_replies(h, lambda i, j: i == 1).items():
        h.server.receive(i, r)
    assert h.server.close_stage() == {}
    u3 = [1, 2, 3, 4, 5, 7]
    assert np.array_equal(h.server.result, ring_sum(h.inputs, u3))
    assert h.server.share_suspects == {1}


def test_s7_when_no_t_shares_pass_the_check_the_server_aborts_instead_of_a_wrong_sum():
    """A secret whose shares are wrong at more than |U4| − t senders (t = 4 of 6 here: 3 wrong) — as a dealer that
    dealt inconsistent shares — cannot be rebuilt: abort (S7), never a wrong sum."""
    h = _unmask_harness()
    for i, r in _unmask_replies(h, lambda i, j: j == 2 and i in (1, 3, 4)).items():
        h.server.receive(i, r)
    with pytest.raises(SecAggAborted, match="no 4 of the 6 shares of holder 2"):
        h.server.close_stage()


def test_stage_misuse_raises():
    h = Harness(n=5)
    with pytest.raises(ValueError):
        _ = h.server.result
    h.steps(5)
    with pytest.raises(ValueError, match="accepts no messages"):
        h.server.receive(1, b"x")
    with pytest.raises(ValueError, match="cannot be closed"):
        h.server.close_stage()


def test_hedged_randomness_binds_secrets_to_the_session():
    # the same Entropy seed in two sessions (another cohort, as in a rerun) must not repeat any secret
    a = Harness(n=6, seed=0)
    b = Harness(n=7, seed=0)  # same per-client entropy seeds, different cohort -> different params hash
    a.step(); b.step()
    ka, kb = (h.clients[1] for h in (a, b))
    assert ka._c.public != kb._c.public and ka._s.public != kb._s.public and ka._b != kb._b
    again = Harness(n=6, seed=0)
    again.step()
    assert again.clients[1]._s.public == ka._s.public  # deterministic given (entropy, identity, session)


def test_c4_plain_input_released_after_masking():
    h = Harness(n=5).steps(2)
    c = h.clients[1]
    assert c._x is not None
    h.step()
    assert c._x is None and c.stage is ClientStage.AWAIT_SURVIVORS
