"""`securefed verify` holds every ε metrics.jsonl states to the server ledger (README: 1 when "a run file it checks,
such as metrics.jsonl" does not verify). A review appended a row for a round the run never had (round 3 of 2,
epsilon 0.5): only rows whose round has a server entry were compared, so verify said VERIFIED (exit 0) and the
report listed the made-up round as aborted. The coordinator writes a row's ε only from its round's server entry
(Coordinator._privacy_fields), so an ε for a round without one is stated by nothing."""

import json

from securefed.cli import main
from securefed.federation.simulation import Simulation
from securefed.runtime.config import load_run_config


def test_verify_fails_a_metrics_row_stating_epsilon_for_a_round_the_ledger_never_charged(tmp_path, tiny_run, capsys):
    over = tiny_run + ["federation.rounds=2", "privacy.mode=central", "privacy.mechanism=gaussian",
                       "privacy.noise_multiplier=1.0", "privacy.clip=1.0", "federation.weighting=uniform",
                       "privacy.force_unlearnable=true"]
    run = tmp_path / "run"
    Simulation(load_run_config(overrides=over), run, progress=False, threads_per_holder=1).run()
    assert main(["verify", str(run)]) == 0
    capsys.readouterr()
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    forged = {**rows[-1], "round": 3, "epsilon": 0.5}
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, forged]))
    assert main(["verify", str(run)]) == 1
    out, err = capsys.readouterr()
    assert "metrics.jsonl: states epsilon 0.5 after round 3, for which the server ledger has no entry" in out + err
    # a row without ε for a round the ledger lacks (a round in flight when the coordinator stopped) states nothing
    forged.pop("epsilon")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in [*rows, forged]))
    assert main(["verify", str(run)]) == 0
