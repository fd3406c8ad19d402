"""Attack scenarios against the secure-aggregation protocol (securefed/audit/protocol_attacks.py).

Each test runs the attack on the real state machines and asserts the verdict *and* the evidence that
earns it; threat ids in threat_models/*index*.yaml point here. Run: `pytest audits -q`.
"""

from securefed.audit import MITIGATED, RESIDUAL
from securefed.audit import protocol_attacks as pa


def test_server_lying_about_dropouts_never_gets_both_shares():
    f = pa.lying_dropouts()
    ev = f.evidence
    assert ev["a_alive_and_dropped"] == {"holders_aborted": 7, "b_shares": 0, "s_shares": 0}
    assert ev["b_moved_to_dropped"]["s_shares"] == 0
    # split view: the honest-looking group reveals b-shares of x, the lied-to group cannot reach t_min signatures
    assert ev["c_split_view"]["b_shares"] >= ev["c_split_view"]["t"] and ev["c_split_view"]["s_shares"] == 0
    assert f.verdict == MITIGATED


def test_key_substitution_is_refused_by_every_holder():
    f = pa.key_substitution()
    for v in ("keep_signature", "resign_with_rogue_key"):
        assert f.evidence[v] == {"holders_aborted": 6, "shares_sent_to_attacker_key": 0}
    t = f.evidence["tampered_share_ciphertext"]
    assert not t["receiver_holds_tampered_senders_share"] and t["shares_held_by_receiver"] == t["cohort"] - 1
    assert f.verdict == MITIGATED


def test_sybils_outside_the_roster_are_refused():
    f = pa.sybil_holders()
    assert f.evidence["cohort_with_unrostered_ids"]["holders_aborted"] == 7
    assert f.evidence["sybil_with_roster_id"]["holders_aborted"] == 6
    assert f.evidence["server_refuses_unrostered_cohort"]
    assert f.verdict == MITIGATED


def test_model_inconsistency_isolates_the_target():
    f = pa.model_inconsistency()
    assert f.evidence["a_all_adverts_to_all"]["holders_aborted"] == 7
    b = f.evidence["b_target_isolated"]
    assert b == {"target_aborted": True, "target_in_sum": False, "sum_is_others_only": True}
    assert f.verdict == MITIGATED


def test_replayed_signed_messages_are_refused_and_masked_input_replay_is_residual():
    f = pa.replay()
    assert f.evidence["advert_replayed_to_server"]["dropped_as_offender"]
    assert f.evidence["key_roster_replayed_to_holders"]["holders_aborted"] == 7
    m = f.evidence["masked_input_replayed"]  # secagg itself does not authenticate y_i: the transport must
    assert m["accepted_by_secagg"] and not m["sum_correct"]
    assert f.verdict == RESIDUAL


def test_bad_shares_abort_or_drop_but_never_give_a_wrong_sum():
    f = pa.bad_shares()
    # a wrong value is skipped (secagg.md §6.4, SA-21): the secret is rebuilt from t other shares that pass
    # the check, so the round neither aborts (as it did before SA-21) nor sums wrongly
    assert f.evidence["wrong_value"] == {"sum_correct": True, "offender_dropped": False}
    for v in ("out_of_field", "share_of_non_neighbour_kind"):
        assert f.evidence[v] == {"sum_correct": True, "offender_dropped": True}
    assert f.verdict == MITIGATED
