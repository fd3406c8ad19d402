"""PrivacySession facade: modes, budgets, dropouts, resume, bad input."""

import dataclasses
import math

import numpy as np
import pytest

from securefed.configio import ConfigError, from_dict
from securefed.privacy import BudgetExhausted, ClipInfo, DPConfig, LedgerError, PrivacySession, read_ledger
from securefed.primitives.rng import DeterministicEntropy

DIM = 600


def _session(tmp_path, cfg, **kw):
    args = dict(population=50, cohort_size=8, rounds_planned=10, sampling="poisson", ledger_dir=tmp_path / "privacy")
    args.update(kw)
    return PrivacySession(cfg, **args)


def _updates(ids, seed=0, norm=0.5):
    rng = np.random.default_rng(seed)
    out = {}
    for h in ids:
        x = rng.normal(size=DIM)
        out[h] = (x / np.linalg.norm(x) * norm * (1 + h % 3)).astype(np.float32)
    return out


def _run_round(s, r, cohort, *, drop=0, seed=0):
    rp = s.begin_round(r, cohort=cohort, dim=DIM)
    e = DeterministicEntropy.from_int(1000 + r)
    xs = _updates(rp.participants, seed)
    encs, infos = {}, {}
    for h in rp.participants:
        encs[h], infos[h] = rp.encode(h, xs[h], e)
    surv = rp.participants[: len(rp.participants) - drop]
    total = np.zeros(rp.encoded_dim, dtype=rp.ring.dtype)
    for h in surv:
        total = total + encs[h]  # uint arithmetic wraps: the ring sum
        rp.ring.reduce(total)
    out = rp.decode(total, survivors=surv, entropy=e)
    ref = sum(rp.clip(h, xs[h])[0].astype(np.float64) for h in surv)
    entry = rp.finish(survivors=surv, clip_infos=infos)
    return rp, out, ref, entry


def test_dpconfig_loads_with_configio_and_rejects_bad_values():
    cfg = from_dict(DPConfig, {"mode": "distributed", "mechanism": "skellam", "target_epsilon": 8, "ring_bits": 16})
    assert cfg.target_epsilon == 8.0 and cfg.ring_bits == 16
    for bad, msg in [({"clip": 0}, "clip"), ({"mode": "central", "mechanism": "gaussian", "noise_multiplier": -1.0}, "noise_multiplier"),
                     ({"mode": "distributed", "target_epsilon": 0}, "target_epsilon"), ({"mode": "distributed", "target_epsilon": -2}, "target_epsilon"),
                     ({"mode": "distributed"}, "noise_multiplier or target_epsilon"), ({"mode": "distributed", "mechanism": "gaussian", "noise_multiplier": 1.0}, "discrete"),
                     ({"mode": "central", "noise_multiplier": 1.0}, "mechanism: gaussian"), ({"server_epsilon_cap": 2.0}, "caps need DP"),
                     ({"mode": "distributed", "noise_multiplier": 1.0, "accountant": "prv"}, "prv"), ({"ring_bits": 8}, "ring_bits")]:
        with pytest.raises(ConfigError, match=msg):
            from_dict(DPConfig, bad)


def test_delta_must_be_below_one_over_population(tmp_path):
    cfg = DPConfig(mode="central", mechanism="gaussian", noise_multiplier=1.0, delta=0.05)
    with pytest.raises(ValueError, match="1/population"):
        _session(tmp_path, cfg)
    s = _session(tmp_path, dataclasses.replace(cfg, delta=None))
    # default δ = min(1e-5, population^-1.1) (dp.md §5): 50^-1.1 = 0.0135 would be no guarantee at all
    assert s.delta == pytest.approx(1e-5)
    big = _session(tmp_path / "big", dataclasses.replace(cfg, delta=None), population=10**6, cohort_size=1000)
    assert big.delta == pytest.approx(1e6**-1.1)  # 2.5e-7: a population that large gets the smaller one


def test_mode_none_is_clip_and_quantize_with_a_ledger(tmp_path):
    s = _session(tmp_path, DPConfig(clip=1.0))
    rp, out, ref, entry = _run_round(s, 0, list(range(8)))
    assert np.abs(out - ref).max() < 8 / rp.scale + 1e-6  # primitives.quantize error bound n/scale
    assert entry["mechanism"] == "none" and math.isinf(entry["epsilon"])
    assert 0 < entry["clip_fraction"] < 1
    assert read_ledger(tmp_path / "privacy" / "ledger.jsonl")[0]["epsilon"] == "inf"


def test_central_mode_adds_server_noise_of_the_right_scale(tmp_path):
    s = _session(tmp_path, DPConfig(mode="central", mechanism="gaussian", noise_multiplier=2.0, clip=1.0))
    rp, out, ref, entry = _run_round(s, 0, list(range(8)))
    assert np.std(out - ref) == pytest.approx(2.0, rel=0.15)  # σ·C over 600 coordinates
    assert 0 < entry["epsilon"] < math.inf and entry["neighbouring_relation"] == "add/remove"
    plain = rp  # the plain path of a fresh round
    rp2 = s.begin_round(1, cohort=list(range(8)), dim=DIM)
    noisy = rp2.noise_plain_sum(np.zeros(DIM, np.float32), DeterministicEntropy.from_int(5))
    assert np.std(noisy) == pytest.approx(2.0, rel=0.15)
    assert plain.finished


@pytest.mark.parametrize("mechanism,bits", [("ddgauss", 32), ("skellam", 32), ("ddgauss", 16)])
def test_distributed_noise_has_the_target_variance(tmp_path, mechanism, bits):
    cfg = DPConfig(mode="distributed", mechanism=mechanism, noise_multiplier=1.5, clip=1.0, ring_bits=bits)
    s = _session(tmp_path, cfg)
    rp, out, ref, entry = _run_round(s, 0, list(range(8)))
    err = out.astype(np.float64) - ref
    # the sum of 8 shares has std σ·C = 1.5 per coordinate (quantization adds < 1/γ); 600 samples
    assert np.std(err) == pytest.approx(1.5, rel=0.12)
    assert abs(np.mean(err)) < 5 * 1.5 / math.sqrt(DIM)
    with pytest.raises(ValueError, match="plain aggregation"):
        rp.noise_plain_sum(out, DeterministicEntropy.from_int(0))


def test_dropouts_shrink_the_noise_and_are_accounted(tmp_path):
    cfg = DPConfig(mode="distributed", noise_multiplier=1.0, clip=1.0)
    a = _session(tmp_path / "a", cfg)
    b = _session(tmp_path / "b", cfg)
    _, out_a, ref_a, ea = _run_round(a, 0, list(range(8)))
    _, out_b, ref_b, eb = _run_round(b, 0, list(range(8)), drop=4)
    assert np.std(out_b - ref_b) == pytest.approx(1.0 * math.sqrt(4 / 8), rel=0.15)
    assert eb["event"]["n_shares"] == 4 and ea["event"]["n_shares"] == 8
    assert eb["epsilon"] > ea["epsilon"]
    assert b.holder_epsilon(0) > a.holder_epsilon(0) > 0 and b.holder_epsilon(7) == 0.0  # 7 dropped


def test_calibration_meets_the_target_over_the_planned_rounds(tmp_path):
    cfg = DPConfig(mode="distributed", target_epsilon=4.0, clip=1.0)
    s = _session(tmp_path, cfg, rounds_planned=5)
    for r in range(5):
        *_, entry = _run_round(s, r, list(range(r, r + 8)))
    assert entry["epsilon"] <= 4.0 and entry["epsilon"] > 3.9
    assert entry["noise_multiplier"] == s.noise_multiplier


def test_holder_with_small_cap_stops_at_the_right_round(tmp_path):
    cfg = DPConfig(mode="central", mechanism="gaussian", noise_multiplier=2.0)
    s = _session(tmp_path, cfg, holder_caps={3: 2.5})
    eps1 = s.holder_epsilon(3)
    rounds_in = []
    for r in range(6):
        rp, *_ = _run_round(s, r, list(range(8)))
        if 3 in rp.participants:
            rounds_in.append(r)
        else:
            assert 3 in rp.refused
            with pytest.raises(PermissionError, match="refused"):
                rp.encode(3, np.zeros(DIM, np.float32), DeterministicEntropy.from_int(0))
    led = read_ledger(tmp_path / "privacy" / "holders" / "holder-3.jsonl")
    statuses = [e["status"] for e in led]
    k = len(rounds_in)
    assert eps1 == 0.0 and 1 <= k < 6 and statuses == ["included"] * k + ["refused"] * (6 - k)
    # the holder's ε after k rounds is within the cap, after k+1 it would not be
    assert led[k - 1]["epsilon"] <= 2.5
    from securefed.privacy.accountant import Accountant, RoundEvent
    assert Accountant().epsilon(s.delta, [RoundEvent("gaussian", "none", 1.0, 2.0)] * (k + 1)) > 2.5
    assert read_ledger(tmp_path / "privacy" / "holders" / "holder-4.jsonl")[-1]["status"] == "included"


def test_server_cap_raises_budget_exhausted_before_encoding(tmp_path):
    # δ as before the default became min(1e-5, N^-1.1): at 1e-5 one round already costs more than 1.2
    cfg = DPConfig(mode="central", mechanism="gaussian", noise_multiplier=1.0, server_epsilon_cap=1.2, delta=50**-1.1)
    s = _session(tmp_path, cfg)
    done = 0
    with pytest.raises(BudgetExhausted, match="cap"):
        for r in range(50):
            _run_round(s, r, list(range(8)))
            done += 1
    assert done >= 1 and s.epsilon_spent()[0] <= 1.2
    # a new session on the same ledger refuses at once: the cap is already spent (or would be)
    with pytest.raises(BudgetExhausted):
        _session(tmp_path, cfg).begin_round(done, cohort=list(range(8)), dim=DIM)


def test_resume_rebuilds_from_the_ledger_without_loss_or_double_count(tmp_path):
    cfg = DPConfig(mode="distributed", noise_multiplier=1.0, adaptive_clip=True)
    s = _session(tmp_path, cfg)
    for r in range(2):
        _run_round(s, r, list(range(8)))
    state = s.state_dict()
    eps2 = s.epsilon_spent()[0]
    _run_round(s, 2, list(range(8)))  # a release after the checkpoint
    eps3 = s.epsilon_spent()[0]
    t = _session(tmp_path, cfg)
    t.load_state_dict(state)
    assert t.epsilon_spent()[0] == pytest.approx(eps3) and eps3 > eps2  # kept, not lost
    t.load_state_dict(state)
    assert t.epsilon_spent()[0] == pytest.approx(eps3)  # loading twice does not double count
    assert t.clip == pytest.approx(s.clip) and t.holder_epsilon(0) == pytest.approx(s.holder_epsilon(0))
    *_, e = _run_round(t, 3, list(range(8)))
    assert e["seq"] == 3 and e["epsilon"] > eps3


def test_broken_chain_or_foreign_checkpoint_is_refused(tmp_path):
    cfg = DPConfig(mode="central", mechanism="gaussian", noise_multiplier=1.0)
    s = _session(tmp_path, cfg)
    for r in range(3):
        _run_round(s, r, list(range(8)))
    p = tmp_path / "privacy" / "ledger.jsonl"
    lines = p.read_text().splitlines(keepends=True)
    p.write_text(lines[0] + lines[2])
    with pytest.raises(LedgerError, match="chain"):
        _session(tmp_path, cfg)
    p.write_text("".join(lines))
    with pytest.raises(LedgerError, match="checkpoint"):
        _session(tmp_path, cfg).load_state_dict({"version": 1, "ledger_entries": 2, "ledger_head": "0" * 64})
    with pytest.raises(LedgerError, match="mode"):
        _session(tmp_path, DPConfig())


def test_overflowing_ring_is_refused_before_encoding(tmp_path):
    cfg = DPConfig(mode="distributed", noise_multiplier=3000.0, ring_bits=16)
    with pytest.raises(ValueError, match="ring"):
        _session(tmp_path, cfg, population=5000, cohort_size=4000).begin_round(0, cohort=list(range(4000)), dim=DIM)
    with pytest.raises(ValueError, match="too small"):
        _session(tmp_path / "n", DPConfig(ring_bits=16), population=100000, cohort_size=40000).begin_round(0, cohort=list(range(40000)), dim=10)


def test_one_shot_and_participant_checks(tmp_path):
    s = _session(tmp_path, DPConfig())
    rp, *_ = _run_round(s, 0, list(range(8)))
    with pytest.raises(RuntimeError, match="finished"):
        rp.finish(survivors=[], clip_infos={})
    rp = s.begin_round(1, cohort=[0, 1], dim=DIM)
    with pytest.raises(ValueError, match="not a participant"):
        rp.encode(5, np.zeros(DIM, np.float32), DeterministicEntropy.from_int(0))
    with pytest.raises(ValueError, match="length"):
        rp.encode(0, np.zeros(DIM + 1, np.float32), DeterministicEntropy.from_int(0))
    with pytest.raises(ValueError, match="survivors"):
        rp.finish(survivors=[7], clip_infos={})
    with pytest.raises(ValueError, match="duplicate"):
        s.begin_round(2, cohort=[1, 1], dim=DIM)
    assert isinstance(ClipInfo(1.0, False).norm, float)


def test_adaptive_clipping_moves_the_clip_privately(tmp_path):
    # every update has norm ≥ 0.5 > C = 0.1: the noisy within-clip fraction is ≈ 0, so C grows
    cfg = DPConfig(mode="distributed", noise_multiplier=1.0, clip=0.1, adaptive_clip=True, target_quantile=0.5)
    s = _session(tmp_path, cfg)
    *_, e0 = _run_round(s, 0, list(range(8)))
    assert e0["clip"] == 0.1 and e0["next_clip"] > 0.1 and e0["noisy_within_clip_fraction"] < 0.5
    # the bit coordinate is in the ring vector and in the accounted sensitivity; σ accounted stays 1.0
    plain = _session(tmp_path / "plain", dataclasses.replace(cfg, adaptive_clip=False))
    *_, p0 = _run_round(plain, 0, list(range(8)))
    assert e0["encoded_dim"] == p0["encoded_dim"] + 1
    assert e0["epsilon"] == pytest.approx(p0["epsilon"], rel=0.05)
    rp = s.begin_round(1, cohort=list(range(8)), dim=DIM)
    assert rp.clip_bound == pytest.approx(e0["next_clip"])


def test_a_round_without_survivors_costs_nothing(tmp_path):
    cfg = DPConfig(mode="distributed", noise_multiplier=1.0, holder_epsilon_cap=1e-3)  # every holder refuses
    s = _session(tmp_path, cfg)
    rp = s.begin_round(0, cohort=list(range(8)), dim=DIM)
    assert rp.participants == () and len(rp.refused) == 8
    entry = rp.finish(survivors=[], clip_infos={})
    assert entry["event"]["mechanism"] == "empty" and entry["epsilon"] == 0.0
    assert [e["status"] for e in read_ledger(tmp_path / "privacy" / "holders" / "holder-0.jsonl")] == ["refused"]


def test_central_round_without_survivors_is_still_charged(tmp_path):
    # the server's Gaussian noise does not depend on survivors (dp.md §6.1): no "empty" shortcut
    s = _session(tmp_path, DPConfig(mode="central", mechanism="gaussian", noise_multiplier=1.0))
    rp = s.begin_round(0, cohort=list(range(8)), dim=DIM)
    entry = rp.finish(survivors=[], clip_infos={})
    assert entry["event"]["mechanism"] == "gaussian" and entry["epsilon"] > 0.0


def test_completing_a_round_does_not_charge_its_holders_twice(tmp_path):
    # a coordinator killed after the holder appends, before the server append, completes the same release
    cfg = DPConfig(mode="distributed", noise_multiplier=1.0)
    s = _session(tmp_path, cfg)
    _run_round(s, 0, list(range(8)))
    once = s.holder_epsilon(0)
    s.ledger.entries.pop()  # as if the server entry had never been appended (holder entries were)
    rp = s.begin_round(0, cohort=list(range(8)), dim=DIM)
    rp.finish(survivors=list(rp.participants), clip_infos={}, completing=True)
    assert s.holder_epsilon(0) == pytest.approx(once)
    assert [e["round"] for e in read_ledger(tmp_path / "privacy" / "holders" / "holder-0.jsonl")] == [0]


def test_resume_refuses_a_ledger_whose_epsilon_or_event_does_not_recompute(tmp_path):
    # an unsigned ledger rewritten consistently (ε/4, chain re-hashed): the chain is fine, the ε is not
    import json

    from securefed.privacy.ledger import GENESIS, canonical_json, entry_hash

    cfg = DPConfig(mode="central", mechanism="gaussian", noise_multiplier=1.0)
    s = _session(tmp_path, cfg)
    for r in range(3):
        _run_round(s, r, list(range(8)))
    p = tmp_path / "privacy" / "ledger.jsonl"
    es = [json.loads(line) for line in p.read_text().splitlines()]
    prev = GENESIS
    for e in es:
        e["epsilon"] /= 4
        e["prev_hash"] = prev
        prev = entry_hash(e)
    p.write_text("".join(canonical_json(e) + "\n" for e in es))
    with pytest.raises(LedgerError, match="entry 0 \\(round 0\\).*events give.*refusing to continue"):
        _session(tmp_path, cfg)


def test_a_run_begun_under_scheme_2_keeps_it_when_resumed_and_verifies(tmp_path, monkeypatch):
    """dp.md §6.5: scheme /3 prices a fixed-size cohort's Gaussian by WBK Thm. 27 (up to 10x smaller ε at large σ).
    A run whose ledger began under /2 (Thm. 9) keeps /2 when resumed by this code -- its earlier rounds are never
    re-priced, so its ε never falls -- and verify recomputes each ledger under the scheme its entries name; a server
    ledger that switches scheme is refused."""
    from securefed.privacy import accountant as acc_mod
    from securefed.privacy.accountant import Accountant, RoundEvent, accountant_version
    from securefed.privacy.verify import check_server_entries

    cfg = DPConfig(mode="central", mechanism="gaussian", noise_multiplier=64.0, clip=1.0)
    kw = dict(population=160, cohort_size=8, sampling="fixed")          # q = 0.05
    monkeypatch.setattr(acc_mod, "ACCOUNTANT_SCHEME", 2)                  # the code of stop 35 began this run
    s = _session(tmp_path, cfg, **kw)
    assert s.scheme == 2
    for r in range(2):
        _run_round(s, r, list(range(8)))
    monkeypatch.undo()
    t = _session(tmp_path, cfg, **kw)                                     # resumed by this code
    assert t.scheme == 2
    *_, e = _run_round(t, 2, list(range(8)))
    entries = read_ledger(tmp_path / "privacy" / "ledger.jsonl")
    assert {x["accountant_version"] for x in entries} == {accountant_version("rdp", 2)}
    ev = RoundEvent.from_dict(e["event"])
    assert e["epsilon"] == pytest.approx(Accountant("rdp", 2).epsilon(s.delta, [ev] * 3), rel=1e-12)
    assert e["epsilon"] > 3 * Accountant("rdp", 3).epsilon(s.delta, [ev] * 3)
    assert check_server_entries(entries) == []
    views = read_ledger(tmp_path / "privacy" / "holders" / "holder-0.jsonl")
    assert {x["accountant_version"] for x in views} == {accountant_version("rdp", 2)}
    # a fresh run accounts under /3
    fresh = _session(tmp_path / "new", cfg, **kw)
    assert fresh.scheme == 3
    *_, e3 = _run_round(fresh, 0, list(range(8)))
    assert e3["accountant_version"] == accountant_version("rdp", 3) and e3["epsilon"] < e["epsilon"] / 3
    # a server ledger whose last entry claims /3 (its earlier rounds re-priced): refused by verify
    last = dict(entries[-1], accountant_version=accountant_version("rdp", 3))
    problems = check_server_entries([*entries[:-1], last])
    assert problems and "accountant scheme changed" in str(problems[0])


def test_a_scheme_2_round_whose_server_entry_was_never_appended_keeps_scheme_2_when_resumed(tmp_path, monkeypatch):
    """dp.md §6.5: a coordinator of scheme /2 stopped between round 0's holder-view appends and its server append,
    then resumed by this code: the views name the scheme the run began with (the server ledger is empty), so the
    views never change scheme -- they verify, and the run resumes again."""
    from securefed.privacy import accountant as acc_mod
    from securefed.privacy.accountant import accountant_version
    from securefed.privacy.verify import check_server_entries, check_view_entries

    cfg = DPConfig(mode="central", mechanism="gaussian", noise_multiplier=64.0, clip=1.0)
    kw = dict(population=160, cohort_size=8, sampling="fixed")
    monkeypatch.setattr(acc_mod, "ACCOUNTANT_SCHEME", 2)
    _run_round(_session(tmp_path, cfg, **kw), 0, list(range(8)))
    monkeypatch.undo()
    (tmp_path / "privacy" / "ledger.jsonl").write_text("")      # stopped before round 0's server append
    t = _session(tmp_path, cfg, **kw)
    assert t.scheme == 2
    _run_round(t, 1, list(range(8)))
    views = read_ledger(tmp_path / "privacy" / "holders" / "holder-0.jsonl")
    assert {x["accountant_version"] for x in views} == {accountant_version("rdp", 2)}
    assert check_view_entries(0, views, "view") == []
    assert check_server_entries(read_ledger(tmp_path / "privacy" / "ledger.jsonl")) == []
    assert _session(tmp_path, cfg, **kw).holder_epsilon(0) > 0          # resumes again
