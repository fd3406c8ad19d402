"""A report of a run without any differential privacy says plainly that the model can memorize its training text,
and its pre-flight section keeps the check's own caveat (review C: a compliance officer's reading)."""

import json

from securefed.cli import main
from securefed.privacy import DPConfig
from securefed.privacy.preflight import preflight
from securefed.report import privacy_checks
from tests.report.signed_run import make_signed_run

DP_SGD = {"train": {"dp_sgd": {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5}}}
MEMO = "WARNING: without differential privacy the released model can memorize its training text"


def _protected(md: str) -> str:
    return md.split("## What was protected, in plain words", 1)[1].split("\n## ", 1)[0]


def test_a_run_without_dp_says_its_model_can_memorize(tmp_path):
    rd = tmp_path / "run"
    make_signed_run(rd, cfg=DPConfig(clip=1.0), own_cap=None)   # DP off, no DP-SGD
    assert main(["report", str(rd)]) == 0
    md = (rd / "report" / "report.md").read_text()
    sec = _protected(md)
    assert MEMO in sec and "reproduce parts of it verbatim" in sec
    assert "Secure aggregation does not prevent this" in sec           # the run's aggregation is secagg
    html = (rd / "report" / "report.html").read_text()
    assert "reproduce parts of it verbatim" in html
    blob = json.dumps(json.loads((rd / "report" / "report.json").read_text())["sections"], ensure_ascii=False)
    assert MEMO in blob


def test_record_level_or_holder_level_dp_runs_carry_no_memorization_warning(tmp_path):
    rd = tmp_path / "sgd"
    make_signed_run(rd, cfg=DPConfig(clip=1.0), own_cap=None, dp_sgd_steps=2, config=DP_SGD)
    assert main(["report", str(rd)]) == 0
    assert MEMO not in (rd / "report" / "report.md").read_text()
    rd2 = tmp_path / "dp"
    make_signed_run(rd2)                                           # holder-level distributed DP
    assert main(["report", str(rd2)]) == 0
    assert MEMO not in (rd2 / "report" / "report.md").read_text()


def test_the_preflight_caveat_survives_the_aggregation_rewrite(tmp_path):
    pf = preflight(DPConfig(clip=1.0), population=4, cohort_size=4, rounds=3, dim=64, sampling="fixed")
    (tmp_path / "preflight.json").write_text(json.dumps({"mode": "none", "lines": pf.lines()}))
    for agg, who in (("secagg", "secure aggregation (secagg) hides each update from the coordinator"),
                     ("plain", "under plain aggregation the coordinator sees each update")):
        line = privacy_checks.preflight_blocks(tmp_path, agg)[1]
        assert line == ("  no DP noise (holder-level ε = ∞): nothing bounds what the released models reveal about a "
                        f"holder's data as a whole; {who}")


def test_a_large_record_level_epsilon_is_called_weak_and_a_small_one_is_not():
    from securefed.report import record_level

    def f(eps):
        return {"dp_sgd": {"enabled": True}, "record_level": {
            "1": {"epsilon": eps, "delta": 1e-5, "steps": 4, "unit": "sequence", "sample_rate": 0.02, "padded_rows": 8},
            "2": {"epsilon": 1.0, "delta": 1e-5, "steps": 4, "unit": "sequence", "sample_rate": 0.02, "padded_rows": 8}}}
    big = [b for b in record_level.protection_blocks(f(18.605736599912312)) if isinstance(b, str)]
    assert any(b.startswith("WARNING: a record-level ε of 18.61 is a WEAK guarantee") and "e^ε ≈ 1.2e+08" in b
               for b in big)
    small = [b for b in record_level.protection_blocks(f(7.9)) if isinstance(b, str)]
    assert not any("WEAK guarantee" in b for b in small)


def test_a_large_holder_level_epsilon_is_called_weak_and_a_small_one_is_not():
    from securefed.report import text

    def words(eps):
        f = {"mode": "distributed", "epsilon": eps, "sampling_rate": 1.0, "privacy_unit": "holder",
             "neighbouring_relation": "replace-one", "aggregation": "secagg"}
        return text.protection_words(f, True, f"After 4 recorded rounds the federation has spent ε = {eps}.")
    assert any(w.startswith("WARNING: a holder-level ε of 12.5 is a WEAK guarantee") for w in words(12.5))
    assert not any("WEAK guarantee" in w for w in words(7.996) + words(float("inf")))
