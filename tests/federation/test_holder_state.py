"""A holder's own state across restarts (protocols/federation.md §6; an audit, stop 34).

A restarted holder resumes from three files in its state directory: its signed ledger, holder_state.json and
trainer.pt. The audit found that a holder whose files were damaged or lost started anyway and forgot spend:
record-level DP-SGD restarted at 0 steps when trainer.pt (or only holder_state.json) was gone, reporting
ε 0.72 for the 3rd round where 0.76 was true, and `verify` passed; a ledger deleted or cut back to a signed
prefix let the holder release past its own ε cap (true 26.1 and 22.1 against a cap of 20); a torn file gave a
traceback or, in `securefed client`, twenty "connection problem" retries and exit 6. Now the state file
anchors the ledger (its length and head, written before and after every append) and the checkpoint; each
release signs the record-level accountant's history; anything that would lose or repeat spend is refused
with one error naming the file (exit 4 in `securefed client`), and nothing is written.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from securefed.audit.federation_harness import tiny_federation
from securefed.federation.holder import HolderStateError
from securefed.privacy.holder_ledger import record_level_problem
from securefed.privacy.ledger import read_ledger

DP = ("privacy.mode=distributed", "privacy.mechanism=ddgauss", "privacy.noise_multiplier=1.0", "privacy.clip=1.0")
DPSGD = ("train.dp_sgd.enabled=true", "train.dp_sgd.noise_multiplier=1.0", "train.dp_sgd.delta=1.0e-4")

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/federation/conftest.py


@pytest.fixture
def two_rounds(tmp_path, fed_cache):
    """Holder 1 of a DP-SGD federation after two released rounds, its trainer.pt of round 1 kept aside."""
    fed = tiny_federation(tmp_path, overrides=(*DP, *DPSGD, "federation.rounds=4"), cache_dir=fed_cache)
    fed.coordinator.run_round(1)
    sd = fed.holders[1].state_dir
    fed.holders[1]._save_state()
    shutil.copy(sd / "trainer.pt", tmp_path / "trainer-round-1.pt")
    fed.coordinator.run_round(2)
    fed.holders[1]._save_state()
    return fed, sd, tmp_path / "trainer-round-1.pt"


def _damage(case: str, sd, older_trainer) -> None:
    state, ledger, trainer = sd / "holder_state.json", sd / "ledger.jsonl", sd / "trainer.pt"
    if case == "state truncated":
        state.write_text(state.read_text()[:20])
    elif case == "state empty":
        state.write_text("")
    elif case == "state missing":
        state.unlink()
    elif case == "ledger torn":
        last = ledger.read_bytes()[:-1].rsplit(b"\n", 1)[1]
        with open(ledger, "ab") as f:
            f.write(last[: len(last) // 2])
    elif case == "ledger missing":
        ledger.unlink()
    elif case == "ledger cut to a signed prefix":
        ledger.write_bytes(b"".join(ledger.read_bytes().splitlines(keepends=True)[:2]))
    elif case == "trainer missing":
        trainer.unlink()
    elif case == "trainer truncated":
        trainer.write_bytes(trainer.read_bytes()[:1000])
    elif case == "trainer of round 1":
        shutil.copy(older_trainer, trainer)
    elif case == "state and trainer of round 1":   # the release entries still sign the steps spent
        shutil.copy(older_trainer, trainer)
        st = json.loads(state.read_text())
        st["trainer"]["step"] = st["trainer"]["dp_sgd_steps"] = 2
        state.write_text(json.dumps(st))
    elif case == "state and trainer missing":
        state.unlink()
        trainer.unlink()
    else:  # pragma: no cover
        raise AssertionError(case)


CASES = {"state truncated": "holder_state.json cannot be read", "state empty": "holder_state.json cannot be read",
         "state missing": "holder_state.json is missing but .*ledger.jsonl holds 4 entries",
         "ledger torn": "last line is incomplete", "ledger missing": "has 0 entries but .* anchors 4",
         "ledger cut to a signed prefix": "has 2 entries but .* anchors 4",
         "trainer missing": "trainer.pt is missing", "trainer truncated": "trainer.pt cannot be read",
         "trainer of round 1": "trainer.pt holds 2 steps .* but .*holder_state.json records 4",
         "state and trainer of round 1": "trainer.pt holds 2 steps .* signed releases record 0 \\(4\\)",
         "state and trainer missing": "holder_state.json is missing but"}


@pytest.mark.parametrize("case", list(CASES))
def test_a_holder_refuses_to_start_on_damaged_or_lost_state_and_writes_nothing(two_rounds, case):
    fed, sd, older = two_rounds
    _damage(case, sd, older)
    before = {p.name: p.read_bytes() for p in sd.iterdir() if p.is_file()}
    holder = fed.restart_holder(1)
    with pytest.raises(HolderStateError, match=CASES[case]):
        holder.check_state()
        holder.welcome(fed.coordinator.welcome_for(1))
    assert holder.welcomed is None and holder.budget is None
    assert {p.name: p.read_bytes() for p in sd.iterdir() if p.is_file()} == before


def test_an_intact_restart_resumes_every_step_and_each_release_signs_the_record_level_spend(two_rounds):
    fed, sd, _ = two_rounds
    holder = fed.restart_holder(1)
    holder.check_state()
    holder.welcome(fed.coordinator.welcome_for(1))
    assert holder.next_round == 3 and holder.trainer.dp_steps == 4            # K = 2 steps x 2 rounds
    fed.coordinator.run_round(3)
    released = [e for e in read_ledger(sd / "ledger.jsonl") if e["status"] == "released"]
    assert [e["record_level"]["steps"] for e in released] == [2, 4, 6]
    assert record_level_problem(released) is None
    eps = [e["record_level"]["epsilon"] for e in released]
    assert eps[0] < eps[1] < eps[2]
    st = json.loads((sd / "holder_state.json").read_text())
    assert st["version"] == 2 and st["ledger_entries"] == len(read_ledger(sd / "ledger.jsonl"))


def test_a_ledger_of_another_run_is_refused(tmp_path, fed_cache):
    fed = tiny_federation(tmp_path / "a", overrides=DP, cache_dir=fed_cache)
    fed.coordinator.run_round(1)
    other = tiny_federation(tmp_path / "b", overrides=(*DP, "seed=1"), cache_dir=fed_cache)
    assert other.coordinator.run_id != fed.coordinator.run_id
    sd = other.holders[1].state_dir
    shutil.copy(fed.holders[1].state_dir / "ledger.jsonl", sd / "ledger.jsonl")
    holder = other.restart_holder(1)
    with pytest.raises(HolderStateError, match="holds entries of another run"):
        holder.welcome(other.coordinator.welcome_for(1))


def test_record_level_spend_that_does_not_add_up_is_named():
    from securefed.privacy.holder_ledger import record_level_entry

    a, b = record_level_entry([[1.0, 0.01, 10]], 1e-5), record_level_entry([[1.0, 0.01, 20]], 1e-5)
    entries = [{"seq": 0, "round": 1, "status": "released", "record_level": a},
               {"seq": 1, "round": 2, "status": "released", "record_level": b}]
    assert record_level_problem(entries) is None and a["epsilon"] < b["epsilon"]
    assert "went back from 20 steps to 10" in record_level_problem(entries[::-1])
    low = dict(b, epsilon=b["epsilon"] / 2)
    assert "its history gives" in record_level_problem([dict(entries[1], record_level=low)])
    assert "not the history's total" in record_level_problem([dict(entries[1], record_level=dict(b, steps=5))])


def test_replayable_dp_sgd_seeds_draw_new_batches_and_noise_after_a_restart(two_rounds):
    """deterministic_secrets (simulations, tests): the DP-SGD batch and noise streams were seeded once per process,
    so a holder restarted from its checkpoint drew round 1's Poisson batches and noise again (the audit, F5: the
    same noise in two releases cancels in their difference). They are now a function of (seed, step)."""
    fed, _, _ = two_rounds
    t = fed.holders[1].trainer

    def draws(step):
        t.step = step
        t._reseed_dp()
        return t._next_batch()[0].clone(), torch.randn(64, generator=t._dp_noise_gen)

    (b0, n0), (b4, n4), (b0_again, n0_again) = draws(0), draws(4), draws(0)
    assert torch.equal(b0, b0_again) and torch.equal(n0, n0_again)          # replayable
    assert not torch.equal(n0, n4) and (b0.shape != b4.shape or not torch.equal(b0, b4))


def test_a_second_process_on_the_same_run_or_state_directory_is_refused(two_rounds, tmp_path):
    """An audit killed `securefed simulate --backend grpc`: its server and holder processes lived on, `--resume`
    started a second set on the same directories, and two processes appended to each holder's ledger (verify:
    "line 7 has seq 4, expected 6"). One process per run directory and per state directory now: the second is
    refused, naming the lock and the pid; the lock dies with its process."""
    import subprocess
    import sys
    import time

    from securefed.federation.coordinator import StateError
    from securefed.runtime.rundir import RunDir

    fed, sd, _ = two_rounds
    other = tmp_path / "other-state"
    code = ("import sys, time; from securefed.runtime.rundir import hold_exclusive as h; "
            "[h(d, 'x') for d in sys.argv[1:]]; print('held', flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code, str(other), str(tmp_path / "other-run")], stdout=subprocess.PIPE,
                         text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        holder = fed.restart_holder(1, state_dir=str(other))
        with pytest.raises(HolderStateError, match=rf"state directory {other} is in use by another process \(pid {p.pid}"):
            holder.check_state()
        c = fed.coordinator
        with pytest.raises(StateError, match="the run directory .* is in use by another process"):
            type(c)(c.cfg, c.channel, RunDir(tmp_path / "other-run"), data=c.data, roster=c.roster, identity=c.identity)
    finally:
        p.kill()
        p.wait()
    time.sleep(0.1)
    holder.check_state()                       # the lock died with its process


def test_a_checkpoint_whose_accountant_history_was_edited_or_dropped_is_refused(two_rounds):
    """The audit edited σ 1 → 50 in trainer.pt's accountant between runs: the holder resumed and signed a history that
    re-priced its spent steps (record-level ε fell along the ledger). A restarted holder's checkpoint must extend its
    last signed history; a holder restarted with dp_sgd off must not drop the accountant (it raised AttributeError)."""
    fed, sd, _ = two_rounds
    tr = torch.load(sd / "trainer.pt", weights_only=True)
    (z, q, n), = tr["dp_sgd_accountant"]["history"]
    tr["dp_sgd_accountant"]["history"] = [(50.0, q, n)]
    torch.save(tr, sd / "trainer.pt")
    holder = fed.restart_holder(1)
    with pytest.raises(HolderStateError, match="does not extend the last signed release's"):
        holder.welcome(fed.coordinator.welcome_for(1))
    from securefed.training.config import DPSGDConfig

    tr["dp_sgd_accountant"]["history"] = [(z, q, n)]
    torch.save(tr, sd / "trainer.pt")
    holder = fed.restart_holder(1, dp_sgd=DPSGDConfig())
    with pytest.raises(HolderStateError, match="dp_sgd off"):
        holder.welcome(fed.coordinator.welcome_for(1))


def test_a_signed_history_that_re_prices_spent_steps_is_named():
    from securefed.privacy.holder_ledger import record_level_entry

    a, b = record_level_entry([[1.0, 0.01, 10]], 1e-5), record_level_entry([[50.0, 0.01, 10], [1.0, 0.01, 5]], 1e-5)
    es = [{"seq": 0, "round": 1, "status": "released", "record_level": a},
          {"seq": 1, "round": 2, "status": "released", "record_level": b}]
    assert "does not extend the previous release's" in record_level_problem(es)
    es[1] = {"seq": 1, "round": 2, "status": "released"}
    assert "a release without record_level after releases with it" in record_level_problem(es)


def test_a_holder_restarted_with_another_privacy_unit_is_refused(two_rounds):
    """Steps signed per training sequence cannot go on per document (dp.md §10.2): no single ε would hold."""
    from securefed.training.config import DPSGDConfig

    fed, sd, _ = two_rounds
    holder = fed.restart_holder(1, dp_sgd=DPSGDConfig(enabled=True, noise_multiplier=1.0, delta=1e-4, unit="document"))
    with pytest.raises(HolderStateError, match="per sequence, but this holder's config has dp_sgd.unit document"):
        holder.welcome(fed.coordinator.welcome_for(1))


class _Killed(Exception):
    """The holder process dies here (between its checkpoint and its signed release)."""


@pytest.mark.parametrize("first,then", [("sequence", "document"), ("document", "sequence")])
def test_a_holder_restarted_with_another_privacy_unit_over_unsigned_steps_is_refused(tmp_path, fed_cache, first, then):
    """A review: the unit check read only the signed releases. A holder that trained a round per sequence and was
    killed after its checkpoint but before its release (or whose round ended unreleased) restarted with unit=document,
    and its first release signed those per-row steps — where one document of k rows moved the clipped sum by k·C, and
    the AdamW state carries them — as spent per document. The checkpoint records its unit, and a restart under
    another unit is refused."""
    from securefed.training.config import DPSGDConfig

    dp = DPSGD + (f"train.dp_sgd.unit={first}",)
    fed = tiny_federation(tmp_path, overrides=(*DP, *dp, "federation.rounds=4"), cache_dir=fed_cache)

    def killed(*_a, **_k):
        raise _Killed

    fed.holders[1].budget.release = killed
    with pytest.raises(_Killed):
        fed.coordinator.run_round(1)
    sd = fed.holders[1].state_dir
    tr = torch.load(sd / "trainer.pt", weights_only=True)
    assert tr["dp_sgd_accountant"]["history"] and not [e for e in fed.ledger(1) if e.get("record_level")]
    holder = fed.restart_holder(1, dp_sgd=DPSGDConfig(enabled=True, noise_multiplier=1.0, delta=1e-4, unit=then))
    with pytest.raises(HolderStateError, match=f"per {first}, but this holder's config has dp_sgd.unit {then}"):
        holder.welcome(fed.coordinator.welcome_for(1))
    holder = fed.restart_holder(1, dp_sgd=DPSGDConfig(enabled=True, noise_multiplier=1.0, delta=1e-4, unit=first))
    holder.welcome(fed.coordinator.welcome_for(1))          # the same unit resumes
    assert holder.trainer.dp_steps == 2


@pytest.mark.parametrize("how", ["emptied", "an older backup"])
def test_a_holder_whose_whole_state_is_gone_or_old_is_told_by_the_coordinators_ledger_and_refuses(tmp_path, fed_cache,
                                                                                                  how):
    """Every file of the state directory gone (a new or wiped state_dir: nothing is left to compare), or all of
    them restored, consistently, from a backup older than the last release: each file agrees with the others, so
    only the coordinator's ledger can tell. The crash review restarted `securefed client` with another state_dir
    mid-run: it rejoined with its DP-SGD accountant at 0 steps (record-level ε 0.81 in round 3, as if round 1) and
    its own ledger without rounds 1-2, said nowhere until `securefed verify` failed after the run. The Welcome now
    carries how many released sums the coordinator's ledger has this holder in; a holder whose own ledger released
    fewer refuses (HolderStateError, exit 4 in `securefed client`) and writes nothing."""
    fed = tiny_federation(tmp_path, overrides=(*DPSGD, "federation.rounds=4"), cache_dir=fed_cache)
    sd = fed.holders[1].state_dir
    fed.coordinator.run_round(1)
    fed.holders[1]._save_state()
    backup = tmp_path / "backup"
    shutil.copytree(sd, backup)
    fed.coordinator.run_round(2)
    shutil.rmtree(sd)
    if how == "an older backup":
        shutil.copytree(backup, sd)
    holder = fed.restart_holder(1)
    holder.check_state()
    want = "update in 2 released sum\\(s\\), the last in round 2, but " + (
        ".* holds no state of this run" if how == "emptied" else ".*ledger.jsonl records 1 release\\(s\\)")
    with pytest.raises(HolderStateError, match=want):
        holder.welcome(fed.coordinator.welcome_for(1))
    assert holder.welcomed is None and holder.budget is None
    assert not (sd / "ledger.jsonl").exists() or read_ledger(sd / "ledger.jsonl") == read_ledger(backup / "ledger.jsonl")
