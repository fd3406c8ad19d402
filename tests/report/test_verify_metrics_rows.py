"""A finished run's metrics.jsonl must keep a row for every round its server ledger charged (README: `verify` exit 1
when "a run file it checks, such as metrics.jsonl" is missing). A newcomer's review (E): with metrics.jsonl deleted or
emptied, `verify` said VERIFIED (exit 0) and `report` exit 0 said the ledger's rounds were "never run"."""

from __future__ import annotations

import shutil

from securefed.cli import main


def test_finished_run_without_its_round_rows_does_not_verify(tiny_run, tmp_path, capsys):
    from securefed.federation.simulation import Simulation
    from securefed.runtime.config import load_run_config

    run = tmp_path / "run"
    Simulation(load_run_config(overrides=tiny_run), run, progress=False, threads_per_holder=1).run()
    assert main(["verify", str(run)]) == 0
    capsys.readouterr()
    rows = (run / "metrics.jsonl").read_text().splitlines(keepends=True)
    assert len(rows) == 2
    cases = {"empty": "", "round 2 cut": rows[0], "removed": None}
    for name, text in cases.items():
        bad = tmp_path / name.replace(" ", "-")
        shutil.copytree(run, bad)
        if text is None:
            (bad / "metrics.jsonl").unlink()
        else:
            (bad / "metrics.jsonl").write_text(text)
        assert main(["verify", str(bad)]) == 1, name
        cap = capsys.readouterr()
        out = cap.out + cap.err
        assert "DO NOT VERIFY" in out and "metrics.jsonl" in out, (name, out)
        assert ("round 2" in out) if name == "round 2 cut" else True
