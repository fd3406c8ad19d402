"""Every JSON file of a real run directory parses with a strict parser (one that refuses NaN and
Infinity), including a run without DP, whose ε is infinite."""

import json

import pytest

from securefed.cli import main


def _strict(text: str, where: str):
    def refuse(token):
        raise AssertionError(f"{where}: bare {token} is not JSON")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.slow
def test_every_json_file_of_a_run_is_strict_json(tmp_path, small_overrides, capsys):
    out = tmp_path / "run"
    args = ["simulate", "--quiet", "--out", str(out), "--set", "federation.rounds=1"]
    args += [a for o in small_overrides if not o.startswith("federation.rounds") for a in ("--set", o)]
    assert main(args) == 0
    files = sorted(p for p in out.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file())
    names = {str(p.relative_to(out)) for p in files}
    assert {"summary.json", "metrics.jsonl", "data_manifest.json", "privacy/ledger.jsonl", "report/report.json",
            "baseline/metrics.jsonl", "model/config.json"} <= names
    for p in files:
        lines = p.read_text().splitlines() if p.suffix == ".jsonl" else [p.read_text()]
        for i, line in enumerate(lines, start=1):
            if line.strip():
                _strict(line, f"{p.relative_to(out)}:{i}")
    summary = _strict((out / "summary.json").read_text(), "summary.json")
    assert summary["epsilon"] == "inf"  # no DP: infinite, written as the ledger writes it
    assert summary["epsilon_unit"] == "holder" and "delta" not in summary and "neighbouring_relation" not in summary
    assert _strict((out / "metrics.jsonl").read_text().splitlines()[0], "metrics")["epsilon"] == "inf"
    # what `securefed simulate` prints is the same strict JSON (a pipe into jq must not meet Infinity), then
    # one line naming the run directory
    printed = capsys.readouterr().out
    text = printed[: printed.rindex("\nrun directory: ") + 1]
    assert _strict(text, "simulate's stdout") == summary
