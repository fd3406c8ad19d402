"""The server/client/keygen subcommands through securefed.cli (added to COMMANDS here if not wired yet)."""

import json

import pytest

from securefed import cli


@pytest.fixture(autouse=True)
def commands(monkeypatch):
    missing = tuple(c for c in ("server", "client", "keygen") if c not in cli.COMMANDS)
    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, *missing))


def test_keygen_then_usage_errors_and_status(tmp_path, capsys):
    assert cli.main(["keygen", str(tmp_path / "pki"), "--holders", "3"]) == 0
    assert (tmp_path / "pki" / "roster.yaml").exists()
    assert cli.main(["keygen", str(tmp_path / "pki"), "--holders", "3"]) == 2          # never overwrites
    assert cli.main(["server", "--out", str(tmp_path / "run")]) == 2                  # --pki missing
    assert cli.main(["server", "--status", str(tmp_path / "nothing")]) == 2
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "status.json").write_text(json.dumps({"next_round": 2}))
    assert cli.main(["server", "--status", str(tmp_path / "run")]) == 0
    assert '"next_round": 2' in capsys.readouterr().out
    # a client whose --id has no credentials: usage error, nothing sent
    assert cli.main(["client", "--pki", str(tmp_path / "pki"), "--id", "9", "--state", str(tmp_path / "s")]) == 2


def test_server_refuses_dp_modes_it_cannot_run_yet(tmp_path, capsys):
    cli.main(["keygen", str(tmp_path / "pki"), "--holders", "3"])
    rc = cli.main(["server", "--pki", str(tmp_path / "pki"), "--out", str(tmp_path / "run"), "--set",
                   "privacy.mode=distributed", "--set", "privacy.noise_multiplier=1.0",
                   "--set", "federation.weighting=uniform"])
    assert rc == 2 and not (tmp_path / "run").exists()
    assert "distributed is not available over the network" in capsys.readouterr().err


def test_client_refused_certificate_exits_3(tmp_path):
    """A holder whose certificate is CA-signed but not on the coordinator's roster gets exit code 3."""
    from securefed.runtime.netserver import NetServer, ServerPlan
    from securefed.transport.pki import make_demo_pki
    from securefed.transport.workload import SyntheticServer

    pki = make_demo_pki(tmp_path / "pki", holders=4)
    roster = pki.roster.read_text()
    short = tmp_path / "short"
    import shutil

    shutil.copytree(pki.root, short)
    import yaml

    data = yaml.safe_load(roster)
    data["holders"] = [h for h in data["holders"] if h["id"] != 4]
    (short / "roster.yaml").write_text(yaml.safe_dump(data))
    srv = NetServer(ServerPlan(rounds=1, cohort_size=3, min_holders=3), SyntheticServer(8), pki=short,
                    out=tmp_path / "run", port=0)
    srv.server.start()
    try:
        rc = cli.main(["client", "--pki", str(pki.root), "--id", "4", "--server", f"127.0.0.1:{srv.port}",
                       "--state", str(tmp_path / "s4"), "--max-failures", "1"])
    finally:
        srv.server.stop(0)
    assert rc == 3
