"""Attack scenarios through holders' inputs and the server's choices (securefed/audit/input_attacks.py)."""

from securefed.audit import MITIGATED, RESIDUAL
from securefed.audit import input_attacks as ia


def test_ring_wrap_is_impossible_for_honest_encoders_and_residual_for_malicious_holders():
    f = ia.ring_wrap()
    ev = f.evidence
    assert ev["plan_refuses_wrapping_config"] and ev["quantize_refuses_unclipped"]
    assert ev["honest_max_abs_error"] <= ev["honest_error_bound"]
    assert ev["malicious_aggregate_norm_over_n_clip"] > 5 and not ev["detected"]
    assert f.verdict == RESIDUAL


def test_poisoned_update_clipped_by_honest_software_unbounded_for_malicious():
    f = ia.poisoned_update()
    assert abs(f.evidence["honest_encoder_clips_to"] - 1.0) < 1e-3 and f.evidence["honest_reported_clipped"]
    # P=512 words of a 5-holder plan: the malicious bound is n·√P ≈ 113 clip norms
    assert 100 < f.evidence["malicious_norm_over_clip"] < 130
    assert f.verdict == RESIDUAL


def test_disaggregation_recovers_without_dp_and_is_bounded_with_distributed_dp():
    f = ia.disaggregation()
    assert f.evidence["none"]["cosine(recovered, Δ_x)"] > 0.99
    assert abs(f.evidence["distributed"]["cosine(recovered, Δ_x)"]) < 0.2
    assert f.evidence["distributed"]["holder_x_ledger_epsilon"] > 0  # both participations charged to x
    assert f.verdict == RESIDUAL


def test_protocol_downgrades_are_refused():
    f = ia.protocol_downgrade()
    for k in ("ring_16_bits", "threshold_minus_1", "t_min_minus_1", "degree_2"):
        assert f.evidence[k]["holders_aborted"] == 7, k
    assert f.evidence["protocol_version_0"]["holders_refused"] == 7
    assert f.evidence["distributed_dp_over_plain"].startswith("refused")
    assert f.evidence["ckks_without_opt_in"].startswith("refused")
    assert f.verdict == MITIGATED
