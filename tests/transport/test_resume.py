"""Coordinator crash recovery without a network (protocols/transport.md §8.1): the checkpoint is the
write-ahead record of a round's privacy accounting, so each completed round is accounted exactly once."""

import pytest

from securefed.privacy.clipping import ClipInfo
from securefed.privacy.ledger import read_ledger
from securefed.runtime.netserver import NetServer, ServerPlan, StateError
from securefed.transport.netprivacy import NetPrivacy
from securefed.transport.pki import make_demo_pki
from securefed.transport.workload import SyntheticServer

INFOS = {h: ClipInfo(norm=0.5, clipped=False) for h in (1, 2, 3)}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_demo_pki(tmp_path_factory.mktemp("pki") / "p", holders=3)


def _server(pki, out, resume=False):
    s = NetServer(ServerPlan(rounds=3, cohort_size=3, min_holders=3), SyntheticServer(16), pki=pki.root, out=out,
                  port=0, resume=resume)
    s.server.stop(0)
    return s


def _complete_round_until_crash(s, *, appended: bool):
    """Round 0 aggregated and applied; checkpoint with the pending accounting; maybe the ledger append; crash."""
    rp = s.privacy.begin(0, [1, 2, 3], 16)
    s.workload.theta[:] = 7.0
    s.next_round = 1
    pending = NetPrivacy.pending(rp, [1, 2, 3], INFOS)
    s._checkpoint(pending)
    if appended:
        s.privacy.finish(rp, [1, 2, 3], INFOS)


def _server_rounds(path):
    return [e["round"] for e in read_ledger(path) if e.get("role") == "server"]


@pytest.mark.parametrize("appended", [False, True])
def test_resume_accounts_a_checkpointed_round_exactly_once(pki, tmp_path, appended):
    s = _server(pki, tmp_path / "run")
    _complete_round_until_crash(s, appended=appended)
    ledger = tmp_path / "run" / "privacy" / "ledger.jsonl"
    assert _server_rounds(ledger) == ([0] if appended else [])
    r = _server(pki, tmp_path / "run", resume=True)
    assert _server_rounds(ledger) == [0] and r.next_round == 1 and (r.workload.theta == 7.0).all()
    holders = tmp_path / "run" / "privacy" / "holders"
    assert all(len(read_ledger(holders / f"holder-{h}.jsonl")) == 1 for h in (1, 2, 3))
    r2 = _server(pki, tmp_path / "run", resume=True)           # resuming again accounts nothing more
    assert _server_rounds(ledger) == [0] and r2.run_id == s.run_id


def test_resume_refuses_a_ledger_that_lost_entries(pki, tmp_path):
    s = _server(pki, tmp_path / "run")
    _complete_round_until_crash(s, appended=True)
    s._checkpoint(None)
    (tmp_path / "run" / "privacy" / "ledger.jsonl").write_text("")            # the ledger was truncated
    with pytest.raises(StateError, match="ledger"):
        _server(pki, tmp_path / "run", resume=True)


def test_resume_refuses_another_roster(pki, tmp_path):
    _server(pki, tmp_path / "run")
    other = make_demo_pki(tmp_path / "other", holders=3)
    with pytest.raises(StateError, match="roster"):
        _server(other, tmp_path / "run", resume=True)


def test_fresh_run_refuses_a_used_directory(pki, tmp_path):
    _server(pki, tmp_path / "run")
    with pytest.raises(FileExistsError):
        _server(pki, tmp_path / "run")


def test_distributed_dp_refused_over_the_network(pki, tmp_path):
    from securefed.privacy import DPConfig

    dp = DPConfig(mode="distributed", mechanism="ddgauss", noise_multiplier=1.0)
    with pytest.raises(ValueError, match="distributed"):
        NetServer(ServerPlan(rounds=1, cohort_size=3, min_holders=3, privacy=dp), SyntheticServer(16), pki=pki.root,
                  out=tmp_path / "run", port=0)
    assert not (tmp_path / "run").exists()
