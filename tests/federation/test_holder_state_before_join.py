"""A holder's own state is checked against its anchors before it connects (protocols/federation.md §6).

federation.md §6 says a state file, ledger or checkpoint that is "cut back, older than what the others record, or
missing while the others remain is refused with one error naming the file (HolderStateError; `securefed client`
checks before it connects and exits 4)". A review (deployed path, kill -9 and restart) found `check_state`, the
client's pre-connect check, only read the three files: a ledger cut to a signed prefix, a deleted ledger or
checkpoint, or a checkpoint older than the state file's anchor passed it, and were refused only at the Welcome,
after the Join. With the coordinator down (a crashed federation being restarted) the client then retried as a
connection problem and ended with exit 6 instead of naming the file. These cases now fail in `check_state` itself.
"""

from __future__ import annotations

import shutil

import pytest

from securefed.federation.holder import HolderStateError

# the same holder after two released rounds as tests/federation/test_holder_state.py (its fixture, not a copy)
from test_holder_state import two_rounds  # noqa: F401 - a pytest fixture, used by name (rootdir-relative import: no __init__.py here)

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/federation/conftest.py


def _damage(case: str, sd, older_trainer) -> None:
    state, ledger, trainer = sd / "holder_state.json", sd / "ledger.jsonl", sd / "trainer.pt"
    if case == "ledger cut to a signed prefix":
        ledger.write_bytes(b"".join(ledger.read_bytes().splitlines(keepends=True)[:2]))
    elif case == "ledger missing":
        ledger.unlink()
    elif case == "trainer missing":
        trainer.unlink()
    elif case == "trainer of round 1":
        shutil.copy(older_trainer, trainer)
    elif case == "state missing":
        state.unlink()
    else:  # pragma: no cover
        raise AssertionError(case)


CASES = {"ledger cut to a signed prefix": "has 2 entries but .* anchors 4",
         "ledger missing": "has 0 entries but .* anchors 4",
         "trainer missing": "trainer.pt is missing",
         "trainer of round 1": "trainer.pt holds 2 steps .* but .*holder_state.json records 4",
         "state missing": "holder_state.json is missing but .*ledger.jsonl holds 4 entries"}


@pytest.mark.parametrize("case", list(CASES))
def test_check_state_refuses_state_that_would_forget_spend_before_any_join(two_rounds, case):
    fed, sd, older = two_rounds
    _damage(case, sd, older)
    before = {p.name: p.read_bytes() for p in sd.iterdir() if p.is_file() and p.name != ".lock"}
    holder = fed.restart_holder(1)
    with pytest.raises(HolderStateError, match=CASES[case]):
        holder.check_state()            # no Welcome: this is what `securefed client` asks before it connects
    assert holder.welcomed is None and holder.budget is None
    assert {p.name: p.read_bytes() for p in sd.iterdir() if p.is_file() and p.name != ".lock"} == before


def test_check_state_passes_an_intact_state_and_the_restart_resumes(two_rounds):
    fed, sd, _ = two_rounds
    holder = fed.restart_holder(1)
    holder.check_state()
    holder.welcome(fed.coordinator.welcome_for(1))
    assert holder.next_round == 3 and holder.trainer.dp_steps == 4
