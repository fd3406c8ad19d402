"""The population is the roster's size, not a free claim (protocols/dp.md §2.1, federation.md H2/H5).

The release ε is amplified by q = cohort_size_planned / population. A coordinator that states another population
than its roster's — misconfigured, or lying to shrink q — is refused at start (its own check), refused by every
holder where a plan depends on the population (central mode: the quantization is planned for it, dp.md §6.4), and
caught by `securefed verify` where none does (distributed mode): the holders sign the size of the roster they know
into their own ledgers, and verify holds the server's population to it and to the roster in the run directory.
Real roles over the audit's ScriptedChannel; the lying coordinator is the real Coordinator with a PrivacySession
that claims 10,000 holders."""

from __future__ import annotations

from dataclasses import replace

import pytest

from securefed.federation.coordinator import Coordinator
from securefed.privacy import PrivacySession
from securefed.report.privacy_checks import verify_run
from securefed.runtime.rundir import RunDir

ALL = (1, 2, 3, 4)
NOISE = ("privacy.noise_multiplier=1.0", "privacy.clip=1.0")
DISTRIBUTED = ("privacy.mode=distributed", "privacy.mechanism=ddgauss", *NOISE)
CENTRAL = ("privacy.mode=central", "privacy.mechanism=gaussian", *NOISE)

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/federation/conftest.py


def _claims(fed, population: int) -> None:
    """The coordinator's privacy session states ``population`` holders (its sampler still draws from the 4)."""
    c = fed.coordinator
    fc = c.cfg.federation
    c.privacy = PrivacySession(replace(c.cfg.privacy, holder_epsilon_cap=None), population=population,
                               cohort_size=fc.cohort_size, rounds_planned=fc.rounds, sampling=fc.sampling,
                               ledger_dir=c.rd.privacy, signer=c.identity, run_id=c.run_id.hex())


def test_a_coordinator_whose_population_is_not_its_rosters_size_refuses_to_start(make, tmp_path):
    fed = make(start=False)
    c = fed.coordinator
    cfg = replace(c.cfg, federation=replace(c.cfg.federation, n_holders=10_000))
    with pytest.raises(ValueError, match=r"the roster lists 4 holders, but federation.n_holders \(the population the "
                                         r"sampling rate and the privacy ledger use\) is 10000: they must be equal"):
        Coordinator(cfg, fed.channel, RunDir(tmp_path / "other"), data=c.data, roster=fed.roster, identity=c.identity)
    assert c.population == 4 and c.privacy.population == 4 and c.privacy.q == c.cfg.federation.cohort_size / 4


def test_holders_refuse_a_central_round_planned_for_another_population(make):
    fed = make(*CENTRAL)
    _claims(fed, 10_000)
    row = fed.coordinator.run_round(1)
    why = "the plan is made for a population of 10000 holders, but this holder's roster lists 4"
    assert row["clients_survived"] == 0 and "aborted" in row
    assert row["refusals"] == {str(h): why for h in ALL}
    for h in ALL:   # each refusal in the holder's own signed ledger, with the population it knows
        assert [(e["status"], e["round"], e["reason"], e["population"]) for e in fed.ledger(h)] == [("refused", 1, why, 4)]


def test_a_coordinator_stating_another_population_is_caught_by_verify(make):
    fed = make(*DISTRIBUTED)
    _claims(fed, 10_000)          # distributed plans do not depend on N: the holders cannot see the lie in a round
    c = fed.coordinator
    for r in (1, 2, 3):
        assert c.run_round(r)["clients_survived"] == 4
    c.privacy.close_run()
    for h in ALL:
        assert {e["population"] for e in fed.ledger(h)} == {4}
    run = c.rd.root
    v = verify_run(run)
    assert not v.ok and ("the holder released round 1 as one of a roster of 4 holders; the server ledger states "
                         "population 10000") in v.problems[0].message, v.problems
    # where the run directory holds the roster (a simulation's pki/), the roster says so first
    (run / "pki").mkdir()
    fed.roster.save(run / "pki" / "roster.yaml")
    v = verify_run(run)
    assert "states population 10000, but the roster (pki/roster.yaml) lists 4 holders" in v.problems[0].message


def test_an_honest_run_verifies_with_its_roster_and_witnesses(make):
    fed = make(*DISTRIBUTED)
    c = fed.coordinator
    for r in (1, 2, 3):
        assert c.run_round(r)["clients_survived"] == 4
    c.privacy.close_run()
    (c.rd.root / "pki").mkdir()
    fed.roster.save(c.rd.root / "pki" / "roster.yaml")
    v = verify_run(c.rd.root)
    assert v.ok, v.problems
    # all 4 in all 3 cohorts at q = 1: exactly what the stated rate says (and a check without power)
    assert v.sampling_check["memberships"] == 12 and v.sampling_check["expected"] == 12
    assert not any("no roster" in n for n in v.notes)


def test_cohorts_are_not_a_function_of_the_public_seed(make):
    """dp.md §11: the sampler was NumPy's generator seeded with cfg.seed (in config.yaml), so anyone could recompute
    every cohort and amplification by sampling held against no one. Without deterministic_secrets each round's draw
    is now seeded from the OS; with it (tests) the stream stays the seed's."""
    import numpy as np

    fed = make("federation.clients_per_round=2", "federation.sampling=fixed", "aggregation.mode=plain", start=False)
    c = fed.coordinator
    public = np.random.default_rng(c.cfg.seed)
    replay = [sorted(int(h) for h in public.choice(list(ALL), size=2, replace=False)) for _ in range(40)]
    assert [c.sample_cohort(list(ALL)) for _ in range(40)] == replay          # deterministic_secrets: the seed's
    c.cfg = replace(c.cfg, deterministic_secrets=False)
    drawn = [c.sample_cohort(list(ALL)) for _ in range(40)]
    assert drawn != replay and len({tuple(x) for x in drawn}) > 1           # 6 possible cohorts: 40 equal is 6^-39


def test_a_fixed_size_cohort_gives_each_holder_the_stated_rate_whoever_is_available(make):
    """Fixed-size sampling drew m of the *available* holders, so with holders away each one's chance was
    m/|available| > m/N, the rate the ledger states (found by this stop's population audit). Now m of the roster."""
    import numpy as np

    fed = make("federation.clients_per_round=2", "federation.sampling=fixed", "aggregation.mode=plain", start=False)
    c = fed.coordinator
    counts = np.zeros(5)
    for _ in range(4000):                      # holder 4 away: each of 1-3 still joins with chance 2/4, not 2/3
        for h in c.sample_cohort([1, 2, 3]):
            counts[h] += 1
    rate = counts[1:4] / 4000
    assert np.all(np.abs(rate - 0.5) < 0.03) and counts[4] == 0     # 2/3 would be 0.667 (σ of the mean ≈ 0.008)
