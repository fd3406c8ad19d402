"""The end of a simulated run removes the private keys simulate generated (threat SYS-34, federation.md §6), on its own:
what goes, what stays, what is said, and a key that cannot be removed. The whole runs are in
tests/runtime/test_simulate_e2e.py and tests/runtime/test_resume_after_summary.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from securefed.federation.simulation import Simulation
from securefed.runtime.progress import Progress
from securefed.runtime.rundir import RunDir
from securefed.transport.pki import Layout, make_demo_pki


def _ended(tmp_path) -> tuple[Simulation, Layout]:
    """A Simulation at its end (only what _remove_private_keys reads) over a run directory with a fresh pki/."""
    sim = Simulation.__new__(Simulation)
    sim.rd, sim.progress = RunDir(tmp_path / "run"), Progress(enabled=False)
    return sim, make_demo_pki(tmp_path / "run" / "pki", holders=3)


def _refuse_unlink(monkeypatch, stuck: Path):
    """Path.unlink fails with EACCES for ``stuck`` alone; returns the real unlink (to put back)."""
    unlink = Path.unlink

    def refuse(self, *a, **k):
        if self == stuck:
            raise PermissionError(13, "Permission denied", str(self))
        return unlink(self, *a, **k)
    monkeypatch.setattr(Path, "unlink", refuse)
    return unlink


def test_every_private_key_goes_and_every_public_file_stays(tmp_path, capsys):
    sim, lay = _ended(tmp_path)
    public = {p: p.read_bytes() for p in lay.root.rglob("*") if p.is_file() and p not in lay.private_files()}
    # ca.pem, server/cert.pem, each holder's cert.pem and ca.pem, roster.yaml
    assert len(lay.private_files()) == 3 + 2 * 3 and len(public) == 1 + 1 + 2 * 3 + 1
    sim._remove_private_keys()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"removed the 9 private keys this run generated in {lay.root}" in err
    assert not any(p.exists() for p in lay.private_files())
    assert {p: p.read_bytes() for p in lay.root.rglob("*") if p.is_file()} == public
    sim._remove_private_keys()                  # nothing left (a report-only --resume after a removal): nothing said
    assert capsys.readouterr().err == ""


def test_a_key_that_cannot_be_removed_is_named_never_said_gone(tmp_path, capsys, monkeypatch):
    sim, lay = _ended(tmp_path)
    stuck = lay.server_identity
    _refuse_unlink(monkeypatch, stuck)
    sim._remove_private_keys()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "removed the" not in err
    assert f"WARNING: 1 private key(s) of this complete run could not be removed: {stuck} (Permission denied)" in err
    assert stuck.is_file() and [p for p in lay.private_files() if p.exists()] == [stuck]


@pytest.mark.parametrize("which", ["server_identity", "holder"])
def test_a_resume_whose_keys_were_deleted_is_one_error(tmp_path, which):
    """Only a run past its summary.json has no keys (its resume writes the report only); one deleted by hand stops the
    resume with a StateError (simulate: exit 4), not load_identity's FileNotFoundError traceback."""
    from securefed.federation.coordinator import StateError

    sim, lay = _ended(tmp_path)
    sim.resume = True
    (lay.server_identity if which == "server_identity" else lay.holder_key(2)).unlink()
    with pytest.raises(StateError, match=r"--resume: 1 private keys of this run are missing from .*start it again"):
        sim._pki()


def test_the_holders_optimizer_states_go_and_their_ledgers_stay(tmp_path, capsys, monkeypatch):
    """SYS-35: each simulated holder's trainer.pt holds AdamW moments of its own gradients alone (what secure
    aggregation hides); a complete run needs none of them. The ledgers and state files stay; a file that cannot be
    removed is named, never said gone."""
    sim, _ = _ended(tmp_path)
    holders = sim.rd.root / "holders"
    for h in (1, 2, 3):
        (holders / str(h)).mkdir(parents=True)
        for f in ("trainer.pt", "ledger.jsonl", "holder_state.json", "holder.yaml"):
            (holders / str(h) / f).write_bytes(b"x")
    stuck = holders / "3" / "trainer.pt"
    unlink = _refuse_unlink(monkeypatch, stuck)
    sim._remove_holder_optimizer_state()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "removed the" not in err
    assert f"WARNING: 1 holder optimizer state file(s) of this complete run could not be removed: {stuck}" in err
    monkeypatch.setattr(Path, "unlink", unlink)
    sim._remove_holder_optimizer_state()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "removed the 1 holders' optimizer states" in err
    assert not list(holders.glob("*/trainer.pt"))
    assert sorted(p.name for p in (holders / "1").iterdir()) == ["holder.yaml", "holder_state.json", "ledger.jsonl"]
    sim._remove_holder_optimizer_state()                 # nothing left: nothing said
    assert capsys.readouterr().err == ""
