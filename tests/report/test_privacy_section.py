"""The report's privacy section says why holders were refused, what the caps and δ mean, and renders
the pre-flight check (report/privacy_checks.py)."""

import json

from securefed.cli import main
from securefed.privacy import DPConfig
from securefed.privacy.preflight import preflight
from securefed.report.privacy_checks import delta_lines
from tests.report.signed_run import make_signed_run


def test_report_explains_refusals_caps_delta_and_preflight(tmp_path, capsys):
    rd = tmp_path / "run"
    make_signed_run(rd)  # holder cap 20: some holder refuses a late round
    pf = preflight(DPConfig(mode="distributed", noise_multiplier=1.0, clip=1.0, delta=1e-3), population=6,
                   cohort_size=4, rounds=4, dim=64, sampling="fixed")
    (rd / "preflight.json").write_text(json.dumps(pf.to_dict(), allow_nan=False))
    assert main(["report", str(rd)]) == 0
    md = (rd / "report" / "report.md").read_text()
    assert "refused round 4 and sent nothing: joining would take this holder's epsilon to" in md
    assert "> its cap 20" in md and "has an ε cap of 20" in md
    assert "δ = 0.001 (below 1/population = 1/6)" in md
    assert "## Pre-flight check" in md and "pre-flight privacy check (distributed, ddgauss)" in md
    assert "| noise_to_signal |" in md
    assert "holder-4's own signed ledger (released before it sent, settled after) gives ε =" in md
    rep = json.loads((rd / "report" / "report.json").read_text())
    assert any(t == "Pre-flight check" for t, _ in rep["sections"])


def test_delta_words():
    assert "NO MEANINGFUL GUARANTEE" in delta_lines(delta=0.25, population=4, dp_on=True)[0]
    # the old default for 4 holders, 4^-1.1: below 1/4, but 0.87 holders' worth of failure probability
    assert "WEAK for 4 holders" in delta_lines(delta=0.2176, population=4, dp_on=True)[0]
    assert "below 1/population" in delta_lines(delta=1e-5, population=4, dp_on=True)[0]
    sgd = {"enabled": True, "delta": 1e-2}
    assert "NO MEANINGFUL record-level guarantee" in delta_lines(delta=None, population=4, dp_on=False, dp_sgd=sgd,
                                                                 records_per_holder={1: 850, 2: 1200})[0]
    ok = delta_lines(delta=None, population=4, dp_on=False, dp_sgd={"enabled": True, "delta": 1e-5},
                     records_per_holder={1: 850})
    assert "≤ 1/records (largest holder: 850 records)" in ok[0]
    # δ between 1/largest and 1/smallest: the largest holder's records have no guarantee (the report said "a
    # guarantee per record", checking the smallest holder only, which the pre-flight check had stopped doing)
    mid = delta_lines(delta=None, population=4, dp_on=False, dp_sgd={"enabled": True, "delta": 1 / 1000},
                      records_per_holder={1: 850, 2: 1200})
    assert "exceeds 1/records = 1/1200 for the largest holder: NO MEANINGFUL" in mid[0]
    doc = delta_lines(delta=None, population=4, dp_on=False, dp_sgd={"enabled": True, "delta": 1e-5, "unit": "document"},
                      records_per_holder={1: 40, 2: 90})
    assert "≤ 1/documents (largest holder: 90 documents): a guarantee per document" in doc[0]
    assert delta_lines(delta=None, population=4, dp_on=False) == []
