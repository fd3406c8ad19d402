"""`securefed audit --profile quick` runs end to end, writes its report, and its numbers make sense.

One run of the quick profile (module fixture, ~1-2 min on 2 cores) feeds every test here.
"""

import math

import pytest

from securefed import jsonio
from securefed.audit.suite import SCENARIOS
from securefed.cli import main


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("audit-quick")
    rc = main(["audit", "--profile", "quick", "--out", str(out)])
    return rc, out, jsonio.read_json(out / "report.json")   # strict: the no-DP ε is "inf", never Infinity


def test_quick_audit_report_has_every_scenario_and_the_privacy_table(quick):
    rc, out, res = quick
    assert rc == 0 and res["unexpected"] == []
    for name in ("report.md", "report.html", "report.json", "config.json"):
        assert (out / name).is_file(), name
    md, page = (out / "report.md").read_text(), (out / "report.html").read_text()
    for s, f in zip(SCENARIOS, res["findings"]):
        assert f["id"] == s.id and f["verdict"] == s.expected and f["threats"]
        assert f"| {s.id} |" in md and s.id in page
        if f["verdict"] == "VULNERABLE":
            assert f["fix"] and "**Fix:**" in md
    assert "http://" not in page and "https://" not in page and "<script" not in page   # self-contained
    rows = res["privacy"]["table"]
    assert [r["run"] for r in rows] == ["no DP", "distributed DP, target ε=8", "distributed DP, target ε=2"]
    assert "ε lower bound" in md and res["date"] in md


def test_quick_audit_detects_memorisation_without_dp(quick):
    _, _, res = quick
    none, *dp = res["privacy"]["table"]
    # Secret Sharer: inserted canaries far above never-inserted controls (max log2 10^4 = 13.3 bits)
    assert none["exposure_inserted"] >= 6.0 and none["exposure_inserted"] > none["exposure_control"] + 3.0
    # one-run audit: without DP every confident guess is right; with DP the bound stays below the accountant
    assert math.isinf(jsonio.decode_float(none["accountant_epsilon"]))
    for row in dp:
        assert row["epsilon_lower_bound"] < jsonio.decode_float(row["accountant_epsilon"])
        assert row["epsilon_lower_bound"] < none["epsilon_lower_bound"]
    assert none["epsilon_lower_bound"] > 2.0
