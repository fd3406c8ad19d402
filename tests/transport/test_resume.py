"""Coordinator crash recovery without a network (protocols/transport.md §8.1): the checkpoint is the
write-ahead record of the round's ledger entry."""

import pytest

from securefed.privacy.ledger import Ledger, read_ledger
from securefed.runtime.netserver import NetServer, ServerPlan, StateError
from securefed.transport.pki import make_demo_pki
from securefed.transport.workload import SyntheticServer

ENTRY = {"round": 0, "mechanism": "none", "survivors": [1, 2, 3]}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_demo_pki(tmp_path_factory.mktemp("pki") / "p", holders=3)


def _server(pki, out, resume=False):
    plan = ServerPlan(rounds=3, cohort_size=3, min_holders=3)
    s = NetServer(plan, SyntheticServer(16), pki=pki.root, out=out, port=0, resume=resume)
    s.server.stop(0)
    return s


def test_resume_completes_a_ledger_one_entry_short(pki, tmp_path):
    s = _server(pki, tmp_path / "run")
    s.workload.theta[:] = 7.0
    s.next_round = 1
    s._checkpoint(ENTRY)                       # crash here: checkpoint written, ledger not yet appended
    assert read_ledger(s.ledger_path) == []
    r = _server(pki, tmp_path / "run", resume=True)
    entries = read_ledger(r.ledger_path)
    assert [e["round"] for e in entries] == [0] and r.next_round == 1 and (r.workload.theta == 7.0).all()
    r2 = _server(pki, tmp_path / "run", resume=True)      # resuming again appends nothing more
    assert len(read_ledger(r2.ledger_path)) == 1 and r2.run_id == s.run_id


def test_resume_refuses_a_ledger_that_disagrees(pki, tmp_path):
    s = _server(pki, tmp_path / "run")
    s.next_round = 1
    s._checkpoint(ENTRY)
    Ledger(s.ledger_path).append(ENTRY)
    Ledger(s.ledger_path).append(dict(ENTRY, round=1))   # an entry the checkpoint never announced
    with pytest.raises(StateError, match="expects 1"):
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
