"""Pre-flight check (privacy/preflight.py, protocols/dp.md §12): noise-to-signal, ε per round, refusals."""

import json
import math

import pytest

from securefed.privacy import DPConfig
from securefed.privacy.preflight import PreflightError, RecordLevel, preflight

TINY = 1_377_408  # parameters of the tiny model with the 4096-token vocabulary


def test_the_old_dp_preset_cannot_learn_and_is_refused_unless_forced():
    # 4 holders, ε = 8 over 4 rounds: σ ≈ 2.55, noise per coordinate of the mean σC/4 ≈ 0.64 against a
    # clipped signal of at most C/√d ≈ 8.5e-4: noise/signal ≈ 750, far above √4 = 2
    cfg = DPConfig(mode="distributed", mechanism="ddgauss", clip=1.0, target_epsilon=8.0, holder_epsilon_cap=10.0)
    p = preflight(cfg, population=4, cohort_size=4, rounds=4, dim=TINY, sampling="fixed")
    assert not p.ok and not p.learnable and not p.forced
    assert 600 < p.noise_to_signal < 900 and p.learnable_limit == 2.0
    assert p.epsilon_planned <= 8.0 and p.epsilon_per_round < p.epsilon_planned
    assert p.noise_std_mean == pytest.approx(p.noise_multiplier * 1.0 / 4, rel=0.01)
    assert p.signal_per_coordinate == pytest.approx(1 / math.sqrt(TINY))
    text = "\n".join(p.lines())
    assert "refused" in text and "record-level DP-SGD" in text and "holders per round" in text
    forced = preflight(DPConfig(**{**cfg.__dict__, "force_unlearnable": True}), population=4, cohort_size=4, rounds=4,
                       dim=TINY, sampling="fixed")
    assert forced.ok and forced.forced and not forced.learnable and "force_unlearnable" in "\n".join(forced.lines())


def test_a_large_cohort_learns_and_the_json_is_strict():
    # 10⁴ holders per round of 10⁶, central Gaussian σ = 0.7, 32-bit ring: noise/signal ≈ 0.7·1174/1e4 ≈ 0.08
    cfg = DPConfig(mode="central", mechanism="gaussian", clip=1.0, noise_multiplier=0.7)
    p = preflight(cfg, population=10**6, cohort_size=10**4, rounds=1000, dim=TINY, sampling="poisson",
                  typical_update_norm=0.5)
    assert p.ok and p.learnable and p.noise_to_signal == pytest.approx(0.7 * math.sqrt(TINY) / 1e4 / 0.5, rel=0.01)
    # central mode plans the ring for the whole population (dp.md §6.4: γ must not depend on who takes part), so
    # the float32 cast's slack is (population + 1)·2^-23 ≈ 0.119 and the rounding is at the population's γ
    assert 1 + (10**6 + 1) * 2**-23 < p.sensitivity_inflation < 1 + (10**6 + 1) * 2**-23 + 0.05
    d = json.loads(json.dumps(p.to_dict(), allow_nan=False))
    assert d["verdict"] == "learnable" and d["lines"][0].startswith("pre-flight")
    none = preflight(DPConfig(), population=4, cohort_size=4, rounds=4, dim=TINY, sampling="fixed")
    assert none.ok and none.to_dict()["epsilon_planned"] == "inf"


def test_parameters_without_a_guarantee_are_one_clear_error():
    kw = dict(population=4, cohort_size=4, rounds=4, dim=1000, sampling="fixed")
    with pytest.raises(PreflightError, match="holder_epsilon_cap = 0.5 is below the cost of one round"):
        preflight(DPConfig(mode="distributed", noise_multiplier=1.0, holder_epsilon_cap=0.5), **kw)
    with pytest.raises(PreflightError, match="server_epsilon_cap = 0.1 is below"):
        preflight(DPConfig(mode="central", mechanism="gaussian", noise_multiplier=1.0, server_epsilon_cap=0.1), **kw)
    with pytest.raises(PreflightError, match="at least 1/population"):
        preflight(DPConfig(mode="central", mechanism="gaussian", noise_multiplier=1.0, delta=0.3), **kw)
    # several problems: all named in the one error
    with pytest.raises(PreflightError, match="(?s)1/population.*below the cost"):
        preflight(DPConfig(mode="central", mechanism="gaussian", noise_multiplier=1.0, delta=0.3,
                           server_epsilon_cap=0.01), **kw)
    with pytest.raises(PreflightError, match="no meaningful record-level guarantee"):
        preflight(DPConfig(), **kw, record_level=RecordLevel(1.0, 1.0, 1e-2, 16, 850, 48))
    with pytest.raises(PreflightError, match="without noise"):
        preflight(DPConfig(), **kw, record_level=RecordLevel(0.0, 1.0, 1e-5, 16, 850, 48))
    # δ ≥ 1, σ = 0 with a finite target: refused when the config is built
    from securefed.configio import ConfigError, from_dict

    for bad, msg in [({"mode": "central", "mechanism": "gaussian", "noise_multiplier": 1.0, "delta": 1.0}, "delta"),
                     ({"target_epsilon": 8.0}, "need DP"), ({"noise_multiplier": 1.0}, "need DP"),
                     ({"mode": "distributed", "noise_multiplier": 0.0}, "no privacy")]:
        with pytest.raises(ConfigError, match=msg):
            from_dict(DPConfig, bad)


def test_record_level_epsilon_matches_opacus():
    from opacus.accountants import RDPAccountant

    p = preflight(DPConfig(), population=4, cohort_size=4, rounds=4, dim=TINY, sampling="fixed",
                  record_level=RecordLevel(0.7, 1.0, 1e-5, 32, 850, 48))
    acc = RDPAccountant()
    acc.history = [(0.7, 32 / 850, 48)]
    # our order grid is coarser than Opacus' default: never below it, and close
    assert acc.get_epsilon(1e-5) <= p.record_level["epsilon_planned"] < 1.05 * acc.get_epsilon(1e-5)
    assert p.record_level["noise_to_signal"] == pytest.approx(0.7 * math.sqrt(TINY) / 32)


def test_bad_arguments():
    with pytest.raises(TypeError):
        preflight({"mode": "none"}, population=4, cohort_size=4, rounds=4, dim=10, sampling="fixed")
    with pytest.raises(ValueError, match="cohort_size"):
        preflight(DPConfig(), population=4, cohort_size=5, rounds=4, dim=10, sampling="fixed")
    with pytest.raises(ValueError, match="dim"):
        preflight(DPConfig(), population=4, cohort_size=4, rounds=4, dim=0, sampling="fixed")


def test_the_dp_preset_is_refused_before_training():
    # README: `securefed simulate --preset dp` is refused by the pre-flight check (4 holders, ε = 8)
    from securefed.runtime.config import load_run_config
    from securefed.training.models import build_model

    cfg = load_run_config(preset="dp")
    model = build_model(cfg.model.preset, vocab_size=cfg.data.vocab_size, seq_len=cfg.data.seq_len, seed=0)
    dim = sum(p.numel() for p in model.parameters())
    fed = cfg.federation
    p = preflight(cfg.privacy, population=fed.n_holders, cohort_size=fed.cohort_size, rounds=fed.rounds, dim=dim,
                  sampling=fed.sampling)
    assert not p.ok and p.noise_to_signal > 100 * p.learnable_limit
    assert cfg.privacy.delta == 1e-5 and p.epsilon_planned <= cfg.privacy.target_epsilon


def _scheme_2_run(tmp_path, monkeypatch, cfg, rounds=1):
    """A run begun by the code of stop 35 (accountant scheme /2): its ledger names /2 (tests/privacy/test_session.py)."""
    from securefed.privacy import PrivacySession
    from securefed.privacy import accountant as acc_mod

    from .test_session import _run_round

    monkeypatch.setattr(acc_mod, "ACCOUNTANT_SCHEME", 2)
    s = PrivacySession(cfg, population=160, cohort_size=8, rounds_planned=10, sampling="fixed",
                       ledger_dir=tmp_path / "privacy")
    for r in range(rounds):
        _run_round(s, r, list(range(8)))
    monkeypatch.undo()
    return tmp_path / "privacy"


@pytest.mark.parametrize("sigma", [{"noise_multiplier": 64.0}, {"target_epsilon": 0.2}])
def test_a_resumed_scheme_2_run_is_pre_flighted_under_scheme_2_as_its_ledger_records(tmp_path, monkeypatch, sigma):
    """dp.md §6.5: a run begun under scheme /2 keeps /2 when resumed (its session pins the scheme of its first server
    ledger entry), but its pre-flight planned under /3: at q = 0.05 and σ = 64 it printed ε 0.0208 per round while the
    ledger records 0.0715, and with a target ε it calibrated σ ≈ 11 under /3 where the run goes on with the σ ≈ 113
    its ledger holds. The check now takes the run's scheme: its ε per round is the ledger's first entry's, which is the
    /2 accountant's ε of that round's event."""
    from securefed.privacy import read_ledger
    from securefed.privacy.accountant import Accountant, RoundEvent
    from securefed.privacy.session import run_scheme

    from .test_session import DIM

    cfg = DPConfig(mode="central", mechanism="gaussian", clip=1.0, force_unlearnable=True, **sigma)
    ledgers = _scheme_2_run(tmp_path, monkeypatch, cfg)
    (first,) = read_ledger(ledgers / "ledger.jsonl")
    assert run_scheme(ledgers) == 2 and run_scheme(tmp_path / "fresh") == 3
    p = preflight(cfg, population=160, cohort_size=8, rounds=10, dim=DIM, sampling="fixed", scheme=run_scheme(ledgers))
    ev = RoundEvent.from_dict(first["event"])         # the full cohort of 8 took part: the round the check plans
    assert p.noise_multiplier == pytest.approx(first["noise_multiplier"], rel=1e-12)
    assert p.epsilon_per_round == pytest.approx(first["epsilon"], rel=1e-12)
    assert p.epsilon_per_round == pytest.approx(Accountant("rdp", 2).epsilon(first["delta"], [ev]), rel=1e-12)
    assert p.epsilon_planned == pytest.approx(Accountant("rdp", 2).epsilon(first["delta"], [ev] * 10), rel=1e-9)
    assert p.accountant_scheme == 2 and any("scheme /2" in line for line in p.lines())
    fresh = preflight(cfg, population=160, cohort_size=8, rounds=10, dim=DIM, sampling="fixed")   # a new run: /3
    assert fresh.accountant_scheme == 3 and not any("scheme /" in line for line in fresh.lines())
    assert fresh.epsilon_per_round < 0.85 * p.epsilon_per_round        # (Thm. 27 vs Thm. 9: the schemes differ here)
    with pytest.raises(ValueError, match="scheme must be one of"):
        preflight(cfg, population=160, cohort_size=8, rounds=10, dim=DIM, sampling="fixed", scheme=1)


def test_a_resumed_run_is_pre_flighted_by_the_coordinator_under_its_ledgers_scheme(tmp_path, monkeypatch, tiny_run):
    """What `securefed server --resume` and `simulate --resume` call (federation/coordinator.py privacy_preflight):
    the resumed run's RUN_DIR/privacy names the scheme; a ledger that cannot be read is one clear error."""
    from securefed.federation.coordinator import privacy_preflight
    from securefed.privacy import LedgerError, read_ledger
    from securefed.runtime.config import load_run_config

    from .test_session import DIM

    run = load_run_config(overrides=[*tiny_run, "privacy.mode=central", "privacy.mechanism=gaussian",
                                     "privacy.noise_multiplier=64", "privacy.clip=1.0", "privacy.force_unlearnable=true",
                                     "federation.n_holders=160", "federation.clients_per_round=8",
                                     "federation.weighting=uniform"])
    ledgers = _scheme_2_run(tmp_path, monkeypatch, run.privacy)
    (first,) = read_ledger(ledgers / "ledger.jsonl")
    resumed = privacy_preflight(run, dim=DIM, records=None, resumed_ledgers=ledgers)
    assert resumed.accountant_scheme == 2 and resumed.epsilon_per_round == pytest.approx(first["epsilon"], rel=1e-12)
    assert privacy_preflight(run, dim=DIM, records=None).accountant_scheme == 3          # a new run
    (ledgers / "ledger.jsonl").write_text("")        # stopped before round 0's server append: the views say /2
    assert privacy_preflight(run, dim=DIM, records=None, resumed_ledgers=ledgers).accountant_scheme == 2
    (ledgers / "ledger.jsonl").write_text("{not json\n")
    with pytest.raises(LedgerError):
        privacy_preflight(run, dim=DIM, records=None, resumed_ledgers=ledgers)


def test_a_holders_own_epsilon_is_projected_over_every_cohort_it_can_be_in():
    """PV-33: under cohort sampling (3 of 10 holders a round) the check stated a holder's own ε over the expected
    ⌈R·q⌉ = 2 rounds (3.19), but any holder may be drawn into all 6 cohorts and spend 5.98 (dp-accounting RDP,
    add/remove, Gaussian z = σ·C/S composed 6 times at q = 1): nothing but its own cap stops it. The golden
    value is dp-accounting's, not securefed's accountant."""
    cfg = DPConfig(mode="central", mechanism="gaussian", clip=1.0, noise_multiplier=2.0, delta=1e-5)
    p = preflight(cfg, population=10, cohort_size=3, rounds=6, dim=10_000, sampling="poisson", force=True)
    every, expected = 5.978535753141434, 3.188996291706574     # dp_accounting 0.6.0 RdpAccountant, 6 and 2 rounds
    assert p.holder_epsilon_planned >= every and p.holder_epsilon_planned == pytest.approx(every, rel=0.01)
    assert p.holder_epsilon_planned > expected * 1.5
    assert "if it is in all 6 cohorts" in "\n".join(p.lines())



def test_a_cap_below_one_rounds_cost_states_that_cost_rounded_up():
    """PV-47: a shown ε is never below the accountant's bound. The holder-cap refusal still said its one-round ε at
    4 digits rounded to nearest — "10.8" for 10.8017 (the reread of stop 51; the server-cap one was mended before)."""
    import re

    kw = dict(population=4, cohort_size=4, rounds=4, dim=1000, sampling="fixed")
    for mode, cap in (("distributed", "holder_epsilon_cap"), ("central", "server_epsilon_cap")):
        base = DPConfig(mode=mode, mechanism="gaussian" if mode == "central" else "ddgauss", noise_multiplier=1.0)
        one = preflight(base, **kw).epsilon_per_round          # q = 1: a holder's one round costs at least this
        with pytest.raises(PreflightError) as e:
            preflight(DPConfig(**{**base.__dict__, cap: 0.5}), **kw)
        shown = re.search(rf"{cap} = 0.5 is below the cost of one round[^(]*\(([^)]+)\)", str(e.value))
        assert shown and float(shown.group(1)) >= one, (str(e.value), one)
