"""The holder's MUST rules H1–H9 (protocols/federation.md §4.2), one negative test each, and the honest path.

Every test drives real ``Holder`` objects with real messages: the coordinator-side code builds them
(``Coordinator.welcome_for``, ``round_spec(PrivacySession.begin_round(...))``, ``SecAggServer``), and
a malicious coordinator is played either by hand (one holder, stage by stage) or by the real
``Coordinator.run_round`` over the audit's ``ScriptedChannel`` with a tamper hook. Each test states
what the holder's own ledger (``state_dir/ledger.jsonl``) must hold afterwards, exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import numpy as np
import pytest

from securefed.ckks.messages import AggregateMsg
from securefed.ckks.messages import decode as ckks_decode
from securefed.ckks.messages import encode as ckks_encode
from securefed.federation import holder as holder_module
from securefed.federation.holder import (HolderStateError, PolicyRefused, announce_model, model_sha256,
                                       withdraw_model)
from securefed.federation.messages import (CkksUploadRequest, Decision, Offer, Plan, Ready, Welcome, decode, decode_as,
                                           encode)
from securefed.federation.stages import Stage
from securefed.privacy.accountant import epsilon_text
from securefed.privacy.remote import HolderBudget, round_spec
from securefed.secagg import SecAggConfig
from securefed.secagg import decode as secagg_decode
from securefed.secagg import encode as secagg_encode

DP = ("privacy.mode=distributed", "privacy.mechanism=ddgauss", "privacy.noise_multiplier=1.0", "privacy.clip=1.0")
ALL = (1, 2, 3, 4)

pytestmark = pytest.mark.usefixtures("one_thread")   # tests/federation/conftest.py


# ------------------------------------------------------------------------- helpers
def view(ledger: list[dict]) -> list[tuple]:
    """What a test asserts of each ledger entry: (status, round, survivors, reason)."""
    return [(e["status"], e["round"], e["survivors"], e["reason"]) for e in ledger]


def offer(fed, r: int, cohort=ALL, **spec_changes) -> tuple[bytes, object]:
    """Round r's Offer exactly as Coordinator.run_round builds it (optionally with a doctored plan)."""
    c = fed.coordinator
    spec = round_spec(c.privacy.begin_round(r, cohort=list(cohort), dim=c.dim, min_survivors=c._t_min(len(cohort))))
    spec = dataclasses.replace(spec, **spec_changes)
    return encode(Offer(r, tuple(cohort), model_sha256(fed.model_bytes()), spec)), spec


def plan(fed, r: int, cohort=ALL, refused=(), **spec_changes) -> tuple[bytes, object]:
    c = fed.coordinator
    participants = [h for h in cohort if h not in refused]
    rp = c.privacy.begin_round(r, cohort=list(cohort), dim=c.dim, min_survivors=c._t_min(len(participants)),
                               refused=list(refused))
    spec = dataclasses.replace(round_spec(rp), **spec_changes)
    return encode(Plan(r, spec)), spec


def count_training(holder, monkeypatch) -> list:
    calls = []
    real = holder.trainer.train_round
    monkeypatch.setattr(holder.trainer, "train_round", lambda theta, **kw: calls.append(1) or real(theta, **kw))
    return calls


def refusal(reply: bytes | None, r: int, h: int = 1) -> str:
    d = decode_as(reply, Decision)
    assert (d.round, d.holder_id, d.accept) == (r, h, False)
    return d.reason


def state(holder) -> dict:
    return json.loads((holder.state_dir / "holder_state.json").read_text())


def answered(fed, stage: Stage, h: int, r: int | None = None) -> int:
    return len(fed.channel.sent(stage=stage, holder=h, round=r, answered=True))


# ------------------------------------------------------------------------- the honest path
def test_honest_rounds_each_holder_releases_once_then_settles(make):
    fed = make(*DP)
    c = fed.coordinator
    rows = [c.run_round(1), c.run_round(2)]
    assert [r["clients_survived"] for r in rows] == [4, 4] and not any("aborted" in r for r in rows)
    t_min = SecAggConfig().thresholds(4).min_survivors                      # 3 of 4
    for h in ALL:
        ledger = fed.ledger(h)
        assert view(ledger) == [("released", 1, t_min, None), ("settled", 1, 4, None),
                                ("released", 2, t_min, None), ("settled", 2, 4, None)]
        assert all(e["mode"] == "distributed" and e["holder_id"] == h and e["run_id"] == c.run_id.hex() for e in ledger)
        # the release charges the worst case (3 noise shares), the settlement the actual 4: ε drops back
        eps = [e["epsilon"] for e in ledger]
        assert eps[0] > eps[1] and eps[2] > eps[3] > eps[1]
        assert answered(fed, Stage.SECAGG_MASKED, h) == 2 and state(fed.holders[h])["next_round"] == 3


# ------------------------------------------------------------------------- H1
def _welcome(fed, h: int = 1, **changes) -> bytes:
    w = decode_as(fed.coordinator.welcome_for(h), Welcome)
    return encode(dataclasses.replace(w, **changes))


@pytest.mark.parametrize("case", ["aggregation", "ring", "threshold", "privacy", "tokenizer", "vocab", "dim",
                                  "other-holder"])
def test_h1_a_welcome_below_the_floor_leaves_the_run_having_written_nothing(make, case):
    policies = {"threshold": {"min_threshold_fraction": 0.75}, "privacy": {"privacy_mode": "distributed"}}
    fed = make(policies={1: policies[case]} if case in policies else None, start=False)
    w = {"aggregation": _welcome(fed, aggregation="plain"), "ring": _welcome(fed, secagg=SecAggConfig(ring_bits=16)),
         "tokenizer": _welcome(fed, tokenizer_sha256="00" * 32), "vocab": _welcome(fed, vocab_size=513),
         "dim": _welcome(fed, dim=fed.coordinator.dim + 1), "other-holder": _welcome(fed, holder_id=2)}.get(case)
    holder = fed.holders[1]
    with pytest.raises(PolicyRefused if case != "other-holder" else ValueError):
        holder.welcome(w or fed.coordinator.welcome_for(1))
    assert holder.welcomed is None and holder.budget is None
    assert not (holder.state_dir / "ledger.jsonl").exists() and not (holder.state_dir / "holder_state.json").exists()
    # a holder that left answers nothing, and a second welcome is checked again from scratch
    assert holder.handle(1, Stage.OFFER, b"") is None
    with pytest.raises(PolicyRefused if case != "other-holder" else ValueError):
        holder.welcome(w or fed.coordinator.welcome_for(1))
    assert holder.welcomed is None


def test_h1_the_honest_welcome_is_accepted_and_a_different_run_is_not(make):
    fed = make(start=False)
    holder = fed.holders[1]
    holder.welcome(fed.coordinator.welcome_for(1))
    assert holder.welcomed.run_id == fed.coordinator.run_id and holder.next_round == 1
    with pytest.raises(PolicyRefused, match="different run"):
        holder.welcome(_welcome(fed, run_id=bytes(16)))


@pytest.mark.parametrize("change", [{"aggregation": "plain"}, {"secagg": SecAggConfig(ring_bits=16)},
                                    {"privacy_mode": "none"}, {"dim": 10}, {"local_steps": 50}])
def test_h1_a_reconnect_cannot_change_the_settings_the_floors_were_checked_against(make, change):
    """gRPC: a holder whose connection dropped joins again and gets a new Welcome of the same run; it
    must be the run it joined (only next_round and the released sums that hold it move: a coordinator resumed after
    a round sends included_rounds 1 where the holder joined at 0, which an e2e run refused as a changed setting), or
    the floors would be bypassed (plain = Δ in clear)."""
    fed = make(*DP)
    holder = fed.holders[1]
    before = holder.welcomed
    moved = dict(next_round=2, included_rounds=1, last_included_round=1)
    holder.welcome(_welcome(fed, **moved))                            # the honest re-join
    assert holder.welcomed == dataclasses.replace(before, **moved)
    with pytest.raises(PolicyRefused, match="changed the run's settings"):
        holder.welcome(_welcome(fed, **change))
    assert holder.welcomed.aggregation == "secagg" and fed.ledger(1) == []


def test_h1_a_batch_above_the_holders_rows_is_refused_so_no_reply_shows_its_row_count(make):
    """The trainer cuts a batch to the rows a holder has, and Ready's tokens are K·min(B, N)·T: an audit's coordinator
    sent batch_size 2^40 and read N = 378 off the first Ready (under distributed DP too). The holder leaves instead."""
    fed = make(*DP, start=False)
    holder = fed.holders[1]
    with pytest.raises(PolicyRefused, match="batch_size 1099511627776 is more rows") as e:
        holder.welcome(_welcome(fed, batch_size=1 << 40))
    rows = int(holder.prepare_data().train.shape[0])
    assert str(rows) not in str(e.value)                                    # public numbers only
    assert holder.welcomed is None and not (holder.state_dir / "ledger.jsonl").exists()
    fed.start()                                                             # the run's own batch: K·B·T, public
    assert decode_as(holder.handle(1, Stage.OFFER, offer(fed, 1)[0]), Decision).accept
    holder.handle(1, Stage.MODEL, fed.model_bytes())
    w = holder.welcomed
    assert holder._round.report.tokens == w.local_steps * w.batch_size * w.seq_len == 2 * 4 * 32


@pytest.mark.parametrize("case", ["micro-batch", "activation-checkpointing", "unknown-preset", "another-model-after-a-restart"])
def test_h1_a_welcome_the_holders_own_config_cannot_train_with_is_a_refusal_not_an_error(make, case):
    """A recipe that contradicts the holder's own dp_sgd, an unknown preset, or (to a restarted holder) another model of
    the same run raised ValueError out of welcome(): `securefed client` retried it as a connection problem 20 times
    and exited 6 (unreachable). It is a refusal: PolicyRefused, exit 7, nothing written."""
    from securefed.training.config import DPSGDConfig

    own_dp = {1: {"dp_sgd": DPSGDConfig(enabled=True, noise_multiplier=1.0, delta=1e-3)}}
    fed = make(holder_fields=own_dp if case in ("micro-batch", "activation-checkpointing") else None,
               start=case == "another-model-after-a-restart")
    w = decode_as(fed.coordinator.welcome_for(1), Welcome)
    if case == "another-model-after-a-restart":
        fed.coordinator.run_round(1)
        fed.holders[1].end_round(1)
        from securefed.training.models import parameter_count
        bad = _welcome(fed, model_preset="20m", dim=parameter_count("20m", vocab_size=w.vocab_size, seq_len=w.seq_len))
        holder = fed.restart_holder(1)
        ledger = fed.ledger(1)
    else:
        train = {"micro-batch": {"micro_batch_size": 2}, "activation-checkpointing": {"activation_checkpointing": True}}
        bad = (_welcome(fed, model_preset="no-such-preset") if case == "unknown-preset"
               else _welcome(fed, train=dataclasses.replace(w.train, **train[case])))
        holder, ledger = fed.holders[1], []
    with pytest.raises(PolicyRefused, match="the run's model or training settings"):
        holder.welcome(bad)
    assert holder.welcomed is None and holder.budget is None and fed.ledger(1) == ledger



def test_h1_a_record_level_cap_below_one_rounds_cost_leaves_the_run_having_written_nothing(make):
    """dp.md §10.5: a newcomer's hospital holder with dp_sgd.epsilon_cap 0.001 (one round cost 0.99) joined, was told
    "it will refuse rounds once the next would pass the cap", refused every round and exited 0 with "all 2 rounds
    done", having taken part in none. A simulation's pre-flight calls that cap an error; the holder now says it at
    the Welcome: a refusal (exit 7) naming the cap, one round's cost and what to change, with nothing written. A cap
    that one round fits is accepted (its later rounds are refused at the offer, as before)."""
    from securefed.training.config import DPSGDConfig

    own = DPSGDConfig(enabled=True, noise_multiplier=1.0, delta=1e-3, epsilon_cap=0.001)
    fed = make(holder_fields={1: {"dp_sgd": own}, 2: {"dp_sgd": dataclasses.replace(own, epsilon_cap=50.0)}},
               start=False)
    holder = fed.holders[1]
    with pytest.raises(PolicyRefused, match=r"its dp_sgd.epsilon_cap 0.001 is below the record-level cost of one round "
                                            r"of this run \([0-9.]+ at delta 0.001: the run's 2 local steps at batch 4\)"
                                            r", so it would refuse every round") as e:
        holder.welcome(fed.coordinator.welcome_for(1))
    assert "raise dp_sgd.epsilon_cap above" in str(e.value)
    assert holder.welcomed is None and holder.budget is None and fed.ledger(1) == []
    fed.holders[2].welcome(fed.coordinator.welcome_for(2))
    assert fed.holders[2].welcomed is not None

CKKS_CASES = {"one-survivor": {"min_survivors": 1}, "unverified": {"verify_aggregate": False},
              "no-flooding": {"decrypt_flood_bits": 0}, "roster-keys": {"key_scope": "roster"},
              "long-lived-keys": {"rotate_key_every_rounds": 50}, "large-tensors": {"max_elements": 1 << 20},
              "distributed": None}


@pytest.mark.parametrize("case", sorted(CKKS_CASES))
def test_h1_a_ckks_welcome_below_the_holders_own_ckks_floor_leaves_the_run_having_written_nothing(make, case):
    """The CKKS policy is the coordinator's to send, not to choose: an audit's coordinator sent min_survivors 1, the
    decryptor released holder 2's CKKS part alone (|released − x₂| 3.5e-12) while holder 2 settled at 4 survivors.
    Each field that weakens it is held to the holder's own policy.ckks (defaults: ckks.md's), and distributed DP is
    refused with CKKS (that part would carry no noise share)."""
    from securefed.federation.holder_config import CkksFloor

    fed = make(*CKKS, policies={1: {"ckks": CkksFloor(max_key_rounds=2)}}, start=False)   # its own floor, not the run's
    holder, w = fed.holders[1], decode_as(fed.coordinator.welcome_for(1), Welcome)
    if case == "one-survivor":   # no RoutingPolicy can be built with it (D2): a coordinator crafts the bytes
        weak = dataclasses.replace(w.ckks)
        object.__setattr__(weak, "min_survivors", 1)
        bad = _welcome(fed, ckks=weak)
    else:
        bad = (_welcome(fed, privacy_mode="distributed") if CKKS_CASES[case] is None
               else _welcome(fed, ckks=dataclasses.replace(w.ckks, **CKKS_CASES[case])))
    with pytest.raises(PolicyRefused) as e:   # exit 7, never retried as a connection problem
        holder.welcome(bad)
    assert ("min_survivors must be >= 2" if case == "one-survivor" else "CKKS") in str(e.value)
    assert "ckks_size" not in str(e.value)
    assert holder.welcomed is None and holder.budget is None and holder.ckks is None
    assert not (holder.state_dir / "ledger.jsonl").exists() and not (holder.state_dir / "holder_state.json").exists()
    holder.welcome(fed.coordinator.welcome_for(1))                  # the run's own settings are at the floor
    assert holder.welcomed.ckks == w.ckks


# ------------------------------------------------------------------------- H2
def test_h1_a_holder_that_requires_an_initial_model_refuses_another_and_a_run_it_would_join_after_round_1(make):
    """dp.md §13.4: policy.init_sha256 holds the run's declared θ0 to the one this holder's compliance approved; a
    fresh holder joining a run already past round 1 cannot tie the θ it is sent to that θ0, so it leaves too."""
    from securefed.federation.holder_config import HolderPolicy

    fed = make(policies={1: {"init_sha256": "ab" * 32}}, start=False)
    declared = decode_as(fed.coordinator.welcome_for(1), Welcome).init_sha256
    assert declared == model_sha256(fed.model_bytes())           # round 1's θ is the declared θ0
    holder = fed.holders[1]
    with pytest.raises(PolicyRefused, match=r"initial weights with SHA-256 .* policy.init_sha256 requires"):
        holder.welcome(fed.coordinator.welcome_for(1))
    assert holder.welcomed is None and not (holder.state_dir / "ledger.jsonl").exists()
    assert not (holder.state_dir / "holder_state.json").exists()
    late = fed.holders[2]                                          # requires the very θ0 the run declares
    late.cfg = dataclasses.replace(late.cfg, policy=dataclasses.replace(late.cfg.policy, init_sha256=declared))
    with pytest.raises(PolicyRefused, match="would join after round 1"):
        late.welcome(_welcome(fed, h=2, next_round=5))
    assert late.welcomed is None and not (late.state_dir / "holder_state.json").exists()
    late.welcome(fed.coordinator.welcome_for(2))                  # from round 1 it joins
    assert late.welcomed.init_sha256 == declared
    with pytest.raises(ValueError, match="64 lowercase hex"):
        HolderPolicy(init_sha256="AB" * 32)


def test_h2_round_1s_model_must_be_the_initial_model_the_welcome_declared(make, monkeypatch):
    """dp.md §13.4: a coordinator declaring one θ0 (what summary.json and the report then name) and training another
    is refused by every holder of round 1's cohort, and the refusal is in its ledger; later rounds' θ are free."""
    fed = make()
    holder = fed.holders[1]
    trained = count_training(holder, monkeypatch)
    _, spec = offer(fed, 1)
    reason = refusal(holder.handle(1, Stage.OFFER, encode(Offer(1, ALL, "cd" * 32, spec))), 1)
    assert reason.startswith("round 1's model (SHA-256 cdcdcdcdcdcdcdcd…) is not the initial model the run declared")
    assert view(fed.ledger(1)) == [("refused", 1, None, reason)] and not trained
    _, spec2 = offer(fed, 2)
    assert decode_as(holder.handle(2, Stage.OFFER, encode(Offer(2, ALL, "cd" * 32, spec2))), Decision).accept


def test_h2_an_offer_of_a_round_already_taken_part_in_is_refused(make, monkeypatch):
    fed = make()
    holder = fed.holders[1]
    first, _ = offer(fed, 1)
    assert decode_as(holder.handle(1, Stage.OFFER, first), Decision).accept
    assert state(holder)["next_round"] == 2            # persisted at acceptance, before any training
    reason = refusal(holder.handle(1, Stage.OFFER, first), 1)
    assert reason == "round 1 was already taken part in (next round 2)"
    assert fed.ledger(1) == []                         # answered, not appended: a replay never grows the ledger
    for _ in range(50):
        assert refusal(holder.handle(1, Stage.OFFER, first), 1) == reason
    assert fed.ledger(1) == []
    trained = count_training(holder, monkeypatch)
    later, _ = offer(fed, 3)                           # rounds may be skipped, never repeated
    assert decode_as(holder.handle(3, Stage.OFFER, later), Decision).accept
    reason2 = refusal(holder.handle(2, Stage.OFFER, offer(fed, 2)[0]), 2)
    assert "already taken part in (next round 4)" in reason2 and not trained
    assert fed.ledger(1) == []


def test_h2_an_offer_that_does_not_list_the_holder_is_not_taken_up(make):
    fed = make()
    holder = fed.holders[1]
    data, _ = offer(fed, 1, cohort=(2, 3, 4))
    assert holder.handle(1, Stage.OFFER, data) is None            # silence: it was not asked
    assert fed.ledger(1) == [] and holder.next_round == 1
    assert holder.handle(1, Stage.MODEL, fed.model_bytes()) is None and holder._round is None
    # nor an offer that arrives under another round number than it names
    assert holder.handle(2, Stage.OFFER, offer(fed, 1)[0]) is None and holder.next_round == 1
    assert decode_as(holder.handle(1, Stage.OFFER, offer(fed, 1)[0]), Decision).accept   # still free to join


@pytest.mark.parametrize("case", ["sigma", "data-noise", "cohort", "delta", "ring", "mode", "dim",
                                  "weak-delta", "made-up-cohort", "unbuildable"])
def test_h2_an_offer_below_the_floor_is_refused_with_its_reason(make, case, monkeypatch):
    """The last three from an audit (stop 33): without its own policy.delta a holder took any δ (0.5: ε 28.0 under
    a cap of 50, 52.7 at 10⁻⁵); a cohort of made-up ids inflated n_shares (each share's noise √(4/64) of σ); an
    offer no encoder could be built from raised instead of being refused, and was not recorded."""
    policies = {"sigma": {"privacy_mode": "distributed", "min_noise_multiplier": 2.0},
                "data-noise": {"privacy_mode": "distributed", "min_noise_multiplier": 0.8},
                "cohort": {"min_cohort": 5}, "delta": {"privacy_mode": "distributed", "delta": 1e-7}}
    fed = make(*DP, policies={1: policies[case]} if case in policies else None)
    changes = {"ring": {"ring_bits": 31}, "dim": {"dim": fed.coordinator.dim + 1},
               "mode": {"mode": "central", "mechanism": "gaussian"},
               # σ as announced passes the floor; the noise the holder would actually add is z_Δ = 0.1
               "data-noise": {"data_noise_multiplier": 0.1},
               "weak-delta": {"delta": 0.5},
               "unbuildable": {"scale": 1e-3}}.get(case, {})
    if case == "made-up-cohort":
        data, spec = offer(fed, 1, cohort=(1, 2, 3, 4, 5, 6, 7, 8), n_shares=8)
    else:
        data, spec = offer(fed, 1, **changes)
    holder = fed.holders[1]
    trained = count_training(holder, monkeypatch)
    reason = refusal(holder.handle(1, Stage.OFFER, data), 1)
    expected = {"sigma": "noise multiplier 1 is below this holder's floor 2.0",
                "data-noise": "noise multiplier 0.1 is below this holder's floor 0.8",
                "cohort": "a cohort of 4 holders is below this holder's minimum of 5",
                "delta": f"the plan's delta {spec.delta:.3g} differs from this holder's delta 1e-07",
                "ring": "the plan's ring (31 bits) differs from the secure-aggregation ring",
                "mode": "the plan's mode/dimension (central, ",
                "dim": "the plan's mode/dimension (distributed, ",
                "weak-delta": "the plan's delta 0.5 is above 1e-05, the most this holder accepts without its own",
                "made-up-cohort": "the offered cohort names holders that are not on the roster",
                "unbuildable": "the offered plan cannot be encoded with: "}[case]
    assert reason.startswith(expected)
    (entry,) = fed.ledger(1)
    assert view([entry]) == [("refused", 1, None, reason)]
    if case == "made-up-cohort":   # refused before the plan is read: the entry names no plan
        return
    assert entry["event"]["mechanism"] == "none" and entry["mode"] == spec.mode and entry["clip"] == spec.clip
    assert state(holder)["next_round"] == 2            # the refused round is gone for good, too
    assert holder.handle(1, Stage.MODEL, fed.model_bytes()) is None and not trained


def test_h2_h5_a_central_plan_for_another_population_than_the_roster_is_refused_and_recorded(make):
    """protocols/dp.md §2.1: a central plan is quantized for the whole population (n_shares = N, dp.md §6.4), the N of
    the sampling rate the release ε is amplified by. A holder holds it to its roster's size, at the Offer and the Plan."""
    fed = make("privacy.mode=central", "privacy.mechanism=gaussian", "privacy.noise_multiplier=1.0", "privacy.clip=1.0")
    why = "the plan is made for a population of 10000 holders, but this holder's roster lists 4"
    data, spec = offer(fed, 1, n_shares=10_000)
    assert refusal(fed.holders[1].handle(1, Stage.OFFER, data), 1) == why
    assert view(fed.ledger(1)) == [("refused", 1, None, why)] and fed.ledger(1)[0]["population"] == 4
    holder = fed.holders[2]
    honest, hspec = offer(fed, 1)
    assert hspec.n_shares == 4 and decode_as(holder.handle(1, Stage.OFFER, honest), Decision).accept
    holder.handle(1, Stage.MODEL, fed.model_bytes())
    msg, _ = plan(fed, 1, n_shares=10_000)
    assert refusal(holder.handle(1, Stage.PLAN, msg), 1, h=2) == why
    assert view(fed.ledger(2)) == [("refused", 1, None, why)]


# ------------------------------------------------------------------------- H3
def test_h3_a_round_that_would_cross_the_cap_is_refused_before_training(make, monkeypatch, tmp_path):
    fed = make(*DP, policies={1: {"privacy_mode": "distributed", "epsilon_cap": 0.5}})
    data, spec = offer(fed, 1)
    t_min = SecAggConfig().thresholds(4).min_survivors
    # the holder's own projection: its spec, t_min = 3 of 4 noise shares, nothing spent yet
    ok, projected = HolderBudget(tmp_path / "scratch.jsonl", holder_id=1, cap=0.5, delta=spec.delta).admits(
        spec, min_survivors=t_min)
    assert not ok and projected > 0.5
    holder = fed.holders[1]
    trained = count_training(holder, monkeypatch)
    reason = refusal(holder.handle(1, Stage.OFFER, data), 1)
    assert reason == (f"joining would take this holder to epsilon {epsilon_text(projected)} (at delta {spec.delta:.3g}, "
                      f"assuming only {t_min} survivors), above its cap 0.5")
    assert view(fed.ledger(1)) == [("refused", 1, None, reason)] and fed.ledger(1)[0]["cap"] == 0.5
    assert holder.handle(1, Stage.MODEL, fed.model_bytes()) is None and not trained
    assert holder.budget.epsilon() == 0.0


# ------------------------------------------------------------------------- H4
@pytest.mark.parametrize("case", ["flipped-byte", "truncated", "another-model"])
def test_h4_a_model_that_does_not_hash_to_the_offer_is_not_trained_on(make, monkeypatch, case):
    fed = make()
    holder = fed.holders[1]
    assert decode_as(holder.handle(1, Stage.OFFER, offer(fed, 1)[0]), Decision).accept
    theta = bytearray(fed.model_bytes())
    bad = {"flipped-byte": bytes(theta[:100]) + bytes([theta[100] ^ 1]) + bytes(theta[101:]),
           "truncated": bytes(theta[:-4]), "another-model": bytes(len(theta))}[case]
    trained = count_training(holder, monkeypatch)
    assert holder.handle(1, Stage.MODEL, bad) is None and not trained
    assert holder.handle(1, Stage.PLAN, plan(fed, 1)[0]) is None          # nothing trained: no Ready
    assert holder.handle(1, Stage.PLAIN_UPLOAD, b"") is None
    assert fed.ledger(1) == [] and holder._round.delta is None and holder._round.masked_part is None
    holder.handle(1, Stage.MODEL, fed.model_bytes())                       # the announced model still is
    assert trained == [1]


@pytest.mark.parametrize("case", ["announced-another-sent", "another-announced-and-sent"])
def test_h4_the_announced_model_is_no_way_past_the_check(make, monkeypatch, case):
    """The coordinator's θ hash is remembered with the bytes object it hashed (announce_model), so that in-process
    holders handed that object do not hash it again: any other object is hashed, and a θ that does not hash to the
    Offer's is refused either way — whether the good θ was announced and another sent, or another announced and sent."""
    fed = make()
    holder = fed.holders[1]
    assert decode_as(holder.handle(1, Stage.OFFER, offer(fed, 1)[0]), Decision).accept   # the good θ's hash
    announced, _ = announce_model(fed.coordinator.outer.params.numpy() * (1 if case == "announced-another-sent" else 0))
    bad = bytes(len(announced)) if case == "announced-another-sent" else announced
    trained = count_training(holder, monkeypatch)
    try:
        assert holder.handle(1, Stage.MODEL, bad) is None and not trained
    finally:
        withdraw_model()
    assert fed.ledger(1) == [] and holder._round.delta is None


def test_h4_the_announced_object_is_not_hashed_again_and_theta_is_announced_as_float32(make, monkeypatch):
    fed = make()
    holder = fed.holders[1]
    assert decode_as(holder.handle(1, Stage.OFFER, offer(fed, 1)[0]), Decision).accept
    theta, digest = announce_model(fed.coordinator.outer.params.numpy())
    assert theta == fed.model_bytes() and digest == hashlib.sha256(theta).hexdigest() == model_sha256(theta)
    hashed = []
    real = hashlib.sha256
    monkeypatch.setattr(holder_module.hashlib, "sha256", lambda *a: hashed.append(1) or real(*a))
    trained = count_training(holder, monkeypatch)
    try:
        holder.handle(1, Stage.MODEL, theta)
        assert trained == [1] and hashed == []                 # the announced object: checked by its remembered hash
        assert model_sha256(bytes(bytearray(theta))) == model_sha256(theta) and hashed == [1]   # equal bytes: hashed
    finally:
        withdraw_model()
    assert model_sha256(theta) and hashed == [1, 1]            # withdrawn: hashed again
    with pytest.raises(TypeError):
        announce_model(fed.coordinator.outer.params.numpy().astype(np.float64))   # θ is float32 on the wire


def test_a_round_that_aborts_before_theta_is_sent_keeps_no_announced_copy(make):
    """θ_r is announced (copied and hashed) before the Offer; a round whose Offers too few accept ends before θ is
    sent, and the coordinator's memo of the copy (4·P bytes: 5.3 GB at 1.3b) must go with it, not live on to the
    next round's announcement."""
    fed = make(tamper=lambda r, s, h, p: None if (s == Stage.OFFER and h != 1) else p)
    row = fed.coordinator.run_round(1)
    assert row["clients_survived"] == 0 and fed.channel.sent(stage=Stage.MODEL) == []
    assert holder_module._announced is None


def test_the_holder_never_writes_into_the_model_it_received(make):
    """The in-process channel hands every holder the coordinator's one θ bytes object, which the holder reads in
    place (no copy): training must leave those bytes as they were, or the next holder would train on another θ."""
    fed = make()
    holder = fed.holders[1]
    assert decode_as(holder.handle(1, Stage.OFFER, offer(fed, 1)[0]), Decision).accept
    theta = fed.model_bytes()
    before = hashlib.sha256(theta).digest()
    holder.handle(1, Stage.MODEL, theta)
    assert holder._round.trained and holder._round.delta is not None
    assert hashlib.sha256(theta).digest() == before


# ------------------------------------------------------------------------- H5
@pytest.mark.parametrize("case", ["clip", "sigma", "delta", "ring", "sampling", "dim", "foreign-participant",
                                  "without-holder", "share-count", "another-round"])
def test_h5_a_plan_that_changes_the_offer_is_refused(make, case):
    fed = make(*DP)
    holder = fed.holders[1]
    data, spec = offer(fed, 1, cohort=(1, 2, 3))
    assert decode_as(holder.handle(1, Stage.OFFER, data), Decision).accept
    holder.handle(1, Stage.MODEL, fed.model_bytes())
    changes = {"clip": {"clip": spec.clip * 2}, "sigma": {"noise_multiplier": spec.noise_multiplier / 2},
               "delta": {"delta": spec.delta / 10}, "ring": {"ring_bits": 31}, "sampling": {"sampling": "poisson"},
               "dim": {"dim": spec.dim + 1}, "share-count": {"n_shares": 4}}.get(case, {})
    cohort = {"foreign-participant": (1, 2, 3, 4), "without-holder": (2, 3, 4)}.get(case, (1, 2, 3))
    msg, _ = plan(fed, 1 if case != "another-round" else 2, cohort=cohort, **changes)
    assert holder.handle(1, Stage.PLAN, msg) is None                       # no Ready: nothing encoded
    rs = holder._round
    assert rs.spec is None and rs.masked_part is None and fed.ledger(1) == []
    good, _ = plan(fed, 1, cohort=(1, 2, 3))                               # the offered plan is still accepted
    assert isinstance(decode(holder.handle(1, Stage.PLAN, good)), Ready)


def test_h5_a_plan_over_fewer_holders_that_crosses_the_cap_is_refused(make, tmp_path):
    fed = make(*DP, start=False)
    # the cap lies between ε with t_min(4) = 3 noise shares and ε with t_min(3) = 2 shares
    c = fed.coordinator
    o = round_spec(c.privacy.begin_round(1, cohort=list(ALL), dim=c.dim, min_survivors=3))
    p = round_spec(c.privacy.begin_round(1, cohort=list(ALL), dim=c.dim, min_survivors=2, refused=[4]))
    scratch = HolderBudget(tmp_path / "scratch.jsonl", holder_id=1, cap=None, delta=o.delta)
    e_offer, e_plan = scratch.admits(o, min_survivors=3)[1], scratch.admits(p, min_survivors=2)[1]
    assert e_offer < e_plan
    cap = (e_offer + e_plan) / 2
    holder = fed.restart_holder(1, policy={"privacy_mode": "distributed", "epsilon_cap": cap})
    holder.welcome(c.welcome_for(1))
    assert decode_as(holder.handle(1, Stage.OFFER, offer(fed, 1)[0]), Decision).accept
    holder.handle(1, Stage.MODEL, fed.model_bytes())
    reason = refusal(holder.handle(1, Stage.PLAN, plan(fed, 1, refused=(4,))[0]), 1)
    assert reason.startswith(f"joining would take this holder to epsilon {e_plan:.4g}") and "assuming only 2" in reason
    assert view(fed.ledger(1)) == [("refused", 1, None, reason)]
    assert holder._round.masked_part is None


# ------------------------------------------------------------------------- H6
def _doctor_round_start(h: int, **changes):
    """Tamper hook: holder h's RoundStart, as the coordinator built it, with ``changes``."""
    def tamper(r, stage, holder, payload):
        if stage == Stage.SECAGG_START and holder == h:
            return secagg_encode(dataclasses.replace(secagg_decode(payload), **changes))
        return payload
    return tamper


@pytest.mark.parametrize("case", ["round", "cohort-without-holder", "foreign-member", "ring", "threshold",
                                  "min-survivors", "degree", "another-model"])
def test_h6_a_round_start_that_differs_from_the_plan_gets_no_masked_input(make, case):
    changes = {"round": {"round_index": 2}, "cohort-without-holder": {"cohort": (2, 3, 4), "degree": 2},
               "foreign-member": {"cohort": (1, 2, 3, 4)}, "ring": {"ring_bits": 16},
               "threshold": {"threshold": 2}, "min-survivors": {"min_survivors": 2}, "degree": {"degree": 2},
               "another-model": {"context": b"securefed/federation/v1|" + bytes(48)}}[case]
    withhold = (lambda r, s, h, p: None if (s == Stage.OFFER and h == 4) else p) if case == "foreign-member" else None
    doctor = _doctor_round_start(1, **changes)
    fed = make(tamper=(lambda r, s, h, p: doctor(r, s, h, withhold(r, s, h, p) if withhold else p)))
    row = fed.coordinator.run_round(1)
    assert answered(fed, Stage.SECAGG_START, 1) == 0 and answered(fed, Stage.SECAGG_MASKED, 1) == 0
    assert fed.ledger(1) == []                         # nothing released, nothing charged
    others = (2, 3) if case == "foreign-member" else (2, 3, 4)
    assert row["clients_survived"] == len(others)        # the others go on without holder 1
    t_min = SecAggConfig().thresholds(len(others) + 1).min_survivors      # the cohort still counts holder 1
    assert all(view(fed.ledger(h)) == [("released", 1, t_min, None), ("settled", 1, len(others), None)]
               for h in others)


def test_h6_a_welcome_with_a_sparser_graph_is_stopped_at_the_round_start(make):
    """SEC-11's path: neighbours=2 in the welcome fits the ring and threshold floors (H1 passes) but
    SECAGG_START checks the graph degree and t against the holder's floor (complete graph)."""
    weak = SecAggConfig(neighbours=2)
    fed = make("aggregation.secagg.neighbours=2")      # the coordinator runs SecAgg+ of degree 2 …
    assert fed.holders[1].welcomed.secagg == weak      # … and every holder took the welcome
    row = fed.coordinator.run_round(1)
    # holders 1-4 have the simulation's floor (the run's own graph = degree 2): restart holder 1 with
    # the default floor (complete graph) and run round 2
    assert row["clients_survived"] == 4
    holder = fed.restart_holder(1, policy={"graph": "complete"})
    holder.welcome(fed.coordinator.welcome_for(1))
    row = fed.coordinator.run_round(2)
    assert answered(fed, Stage.SECAGG_START, 1, r=2) == 0 and answered(fed, Stage.SECAGG_MASKED, 1, r=2) == 0
    assert view(fed.ledger(1)) == [("released", 1, 3, None), ("settled", 1, 4, None)] and row["clients_survived"] == 3


def _capped_between_t_min_3_and_2(make, tmp_path, **kw):
    """Holder 1 with a cap between ε at t_min(4) = 3 noise shares and ε at t_min(3) = 2."""
    fed = make(*DP, start=False, **kw)
    c = fed.coordinator
    spec = round_spec(c.privacy.begin_round(1, cohort=list(ALL), dim=c.dim, min_survivors=3))
    scratch = HolderBudget(tmp_path / "scratch.jsonl", holder_id=1, cap=None, delta=spec.delta)
    e3, e2 = scratch.admits(spec, min_survivors=3)[1], scratch.admits(spec, min_survivors=2)[1]
    cap = (e3 + e2) / 2
    fed.restart_holder(1, policy={"privacy_mode": "distributed", "epsilon_cap": cap})
    fed.start()
    return fed, e2, cap


def test_h6_a_smaller_masked_cohort_that_would_cross_the_cap_is_refused_before_release(make, tmp_path):
    """The plan was admitted for t_min(4) = 3 noise shares; the RoundStart names 3 holders, whose
    t_min is 2: releasing would charge past the cap, so the holder refuses instead (H3 at release)."""
    fed, e2, cap = _capped_between_t_min_3_and_2(make, tmp_path)
    c = fed.coordinator
    honest = c._secure_session
    # the coordinator runs secure aggregation over (1, 2, 3) although the plan has (1, 2, 3, 4)
    c._secure_session = lambda r, cohort, *a, **kw: honest(r, [h for h in cohort if h != 4], *a, **kw)
    row = c.run_round(1)
    assert answered(fed, Stage.SECAGG_MASKED, 1) == 0
    (entry,) = fed.ledger(1)
    assert entry["status"] == "refused" and entry["round"] == 1
    assert entry["reason"].startswith(f"releasing to a cohort of 3 would take this holder to epsilon {e2:.4g}")
    assert "assuming only 2 survivors" in entry["reason"]
    assert holder_epsilon(fed, 1) == 0.0 < cap and row["clients_survived"] in (0, 2)


def test_h6_a_secure_aggregation_cohort_smaller_than_the_plans_shares_is_held_to_the_noise_floor(make):
    """An audit (stop 33): each noise share is σ/√n_shares, so a plan with more shares than the holders that really
    sum (there: 60 made-up ids beside 4 real ones) put σ·√(4/64) = 0.25 of the floor into the sum. The floor is now
    checked at the cohort of the RoundStart: here 3 of the plan's 4 shares, σ·√(3/4) = 0.866 < the floor 0.9."""
    fed = make(*DP, policies={1: {"privacy_mode": "distributed", "min_noise_multiplier": 0.9}})
    c = fed.coordinator
    honest = c._secure_session
    c._secure_session = lambda r, cohort, *a, **kw: honest(r, [h for h in cohort if h != 4], *a, **kw)
    c.run_round(1)
    assert answered(fed, Stage.SECAGG_MASKED, 1) == 0
    (entry,) = fed.ledger(1)
    assert entry["status"] == "refused" and "the noise multiplier is at most 0.866" in entry["reason"]
    assert holder_epsilon(fed, 1) == 0.0


def test_h6_a_holder_that_drops_after_the_keys_does_not_shrink_the_masked_cohort(make, tmp_path):
    """Under secagg the cohort is fixed at the key stages, before training (federation.md §4.3): holder 4's
    Ready lost makes it a dropout of U2 \\ U3, not a smaller cohort; t_min stays 3, holder 1 releases within its cap."""
    fed, e2, cap = _capped_between_t_min_3_and_2(make, tmp_path, ignore=lambda r, s, h, reply: s == Stage.PLAN and h == 4)
    row = fed.coordinator.run_round(1)
    assert answered(fed, Stage.SECAGG_MASKED, 1) == 1 and row["clients_survived"] == 3
    assert row["secagg_dropped"] == [4]
    assert view(fed.ledger(1)) == [("released", 1, 3, None), ("settled", 1, 3, None)]
    assert 0.0 < holder_epsilon(fed, 1) <= cap


def test_h6_a_holder_refusing_the_plan_after_the_keys_is_a_dropout_and_both_ledgers_say_why(make, tmp_path):
    """federation.md §4.3: holder 4's acceptance is lost, so the plan is over (1, 2, 3) — t_min(3) = 2, past
    holder 1's cap: holder 1, which already shared its keys (it expanded its masks), refuses the Plan. To the
    protocol it is a dropout of U2 \\ U3: 2 and 3 reveal its s-share, the sum is theirs, and its own ledger
    and the round's row give the reason; its mask buffer is erased."""
    fed = make(*DP, start=False, ignore=lambda r, s, h, reply: s == Stage.OFFER and h == 4)
    c = fed.coordinator   # the cap lies between ε of the offer (t_min(4) = 3) and of the plan without holder 4
    o = round_spec(c.privacy.begin_round(1, cohort=list(ALL), dim=c.dim, min_survivors=3))
    p = round_spec(c.privacy.begin_round(1, cohort=list(ALL), dim=c.dim, min_survivors=2, refused=[4]))
    scratch = HolderBudget(tmp_path / "scratch.jsonl", holder_id=1, cap=None, delta=o.delta)
    e_offer, e_plan = scratch.admits(o, min_survivors=3)[1], scratch.admits(p, min_survivors=2)[1]
    fed.restart_holder(1, policy={"privacy_mode": "distributed", "epsilon_cap": (e_offer + e_plan) / 2})
    fed.start()
    client = []
    handle = fed.holders[1].handle

    def spy(r, stage, payload):   # holder 1's secure-aggregation client, as it was after its ShareKeys
        reply = handle(r, stage, payload)
        if stage == Stage.SECAGG_SHARES:
            client.append(fed.holders[1]._round.secagg)
        return reply
    fed.holders[1].handle = spy
    row = fed.coordinator.run_round(1)
    assert [answered(fed, s, 1) for s in (Stage.SECAGG_START, Stage.SECAGG_SHARES, Stage.PLAN)] == [1, 1, 1]
    (entry,) = fed.ledger(1)
    assert entry["status"] == "refused" and entry["reason"].startswith(f"joining would take this holder to epsilon {e_plan:.4g}")
    assert row["refusals"] == {"1": entry["reason"], "4": "no answer"}
    assert row["secagg_dropped"] == [1] and row["clients_survived"] == 2 and "aborted" not in row
    assert answered(fed, Stage.SECAGG_MASKED, 1) == 0 and fed.channel.sent(stage=Stage.SECAGG_MASKED, holder=1) == []
    for h in (2, 3):   # t_min of the session's cohort (1, 2, 3) is 2; both survived
        assert view(fed.ledger(h)) == [("released", 1, 2, None), ("settled", 1, 2, None)]
    (c,) = client
    assert c.stage.value == "aborted" and c._premask is None and c._b is None and c._x is None


def test_h6_a_holder_gone_between_the_keys_and_its_masked_input_is_unmasked_without_it(make):
    """Holder 4 shares its keys and is gone from θ_r on (as a killed process): its pairs are unmasked."""
    fed = make(holder_fields={4: {"vanish_at": (1, int(Stage.MODEL))}})
    row = fed.coordinator.run_round(1)
    assert answered(fed, Stage.SECAGG_SHARES, 4) == 1 and answered(fed, Stage.PLAN, 4) == 0
    assert row["secagg_dropped"] == [4] and row["clients_survived"] == 3 and fed.ledger(4) == []
    assert all(fed.holders[h]._pool is not None for h in (1, 2, 3))     # the masks were expanded on threads


def holder_epsilon(fed, h: int) -> float:
    return fed.holders[h].budget.epsilon()


# ------------------------------------------------------------------------- H7
def test_h7_a_second_masked_input_request_in_the_same_round_is_refused(make):
    fed = make()
    again = []

    def ignore(r, stage, h, reply):       # the coordinator "retries" holder 1's masked-input stage
        if stage == Stage.SECAGG_MASKED and h == 1 and not again:
            (first,) = fed.channel.sent(stage=Stage.SECAGG_MASKED, holder=1)
            again.append(fed.channel.ask(r, stage, 1, first.payload))
        return False

    fed.channel.ignore = ignore
    row = fed.coordinator.run_round(1)
    assert again == [None] and row["clients_survived"] == 4
    assert answered(fed, Stage.SECAGG_MASKED, 1) == 1
    assert view(fed.ledger(1)) == [("released", 1, 3, None), ("settled", 1, 4, None)]


def test_h7_a_second_plain_upload_request_in_the_same_round_is_refused(make):
    fed = make("aggregation.mode=plain")
    again = []

    def ignore(r, stage, h, reply):
        if stage == Stage.PLAIN_UPLOAD and h == 1 and not again:
            again.append(fed.channel.ask(r, stage, 1, b""))
        return False

    fed.channel.ignore = ignore
    row = fed.coordinator.run_round(1)
    assert again == [None] and row["clients_survived"] == 4
    assert view(fed.ledger(1)) == [("released", 1, 4, None)]          # plain: no threshold, all 4 counted


def test_h7_a_released_round_is_never_taken_part_in_again_even_after_a_restart(make):
    # holder 1 dies right after its masked input (before unmasking): released, never settled
    fed = make(holder_fields={1: {"vanish_at": (1, int(Stage.SECAGG_CONSISTENCY))}})
    fed.coordinator.run_round(1)
    assert answered(fed, Stage.SECAGG_MASKED, 1) == 1 and view(fed.ledger(1)) == [("released", 1, 3, None)]
    holder = fed.restart_holder(1, vanish_at=None)
    holder.welcome(fed.coordinator.welcome_for(1))
    assert holder.next_round == 2
    reason = refusal(holder.handle(1, Stage.OFFER, offer(fed, 1)[0]), 1)
    assert reason == "round 1 was already taken part in (next round 2)"
    assert view(fed.ledger(1)) == [("released", 1, 3, None)]
    # its state file lost, the ledger kept: nothing would show a ledger cut back, so it refuses to start (§6)
    holder = fed.restart_holder(1, vanish_at=None)
    (holder.state_dir / "holder_state.json").unlink()
    with pytest.raises(HolderStateError, match="holder_state.json is missing but .* holds 1 entries"):
        holder.welcome(fed.coordinator.welcome_for(1))
    assert holder.welcomed is None and len(fed.ledger(1)) == 1


# ------------------------------------------------------------------------- H8
def test_h8_settled_is_written_before_the_unmask_shares_leave(make):
    seen = {}

    def ignore(r, stage, h, reply):
        if stage == Stage.SECAGG_UNMASK:
            seen[h] = view(fed.ledger(h))        # the ledger at the moment the shares are handed over
        return False

    fed = make(ignore=ignore, holder_fields={4: {"vanish_at": (1, int(Stage.SECAGG_UNMASK))}})
    row = fed.coordinator.run_round(1)
    assert row["clients_survived"] == 4          # holder 4 sent its masked input, then died
    for h in (1, 2, 3):
        assert seen[h] == [("released", 1, 3, None), ("settled", 1, 4, None)]
    assert 4 not in seen and view(fed.ledger(4)) == [("released", 1, 3, None)]   # the conservative charge stays


# ------------------------------------------------------------------------- H9 (and H6/H7 on the CKKS route)
CKKS = ("aggregation.mode=ckks+secagg", "aggregation.ckks.enabled=true", "aggregation.ckks.rotate_key_every_rounds=2")


def test_h9_the_decryptor_releases_one_sum_per_round_and_only_of_its_round(make, caplog):
    fed = make(*CKKS)
    asked: dict[str, bytes | None] = {}
    aggregates: dict[int, bytes] = {}

    def ignore(r, stage, h, reply):
        if stage == Stage.CKKS_UPLOAD and h == 2 and r == 1:      # H7: a second upload request, same round
            (req,) = fed.channel.sent(stage=Stage.CKKS_UPLOAD, holder=2, round=1)
            asked["upload-again"] = fed.channel.ask(r, stage, h, req.payload)
        if stage == Stage.CKKS_DECRYPT:
            (sent,) = fed.channel.sent(stage=Stage.CKKS_DECRYPT, holder=h, round=r)
            aggregates[r] = sent.payload
            agg = ckks_decode(sent.payload)
            subset = dataclasses.replace(agg, survivors=agg.survivors[:3], uploads=agg.uploads[:3])
            asked[f"r{r}-same-again"] = fed.channel.ask(r, stage, h, sent.payload)
            asked[f"r{r}-subset"] = fed.channel.ask(r, stage, h, ckks_encode(subset))
            if r == 2:
                asked["r2-round-1-aggregate"] = fed.channel.ask(r, stage, h, aggregates[1])
                asked["r2-labelled-round-3"] = fed.channel.ask(r, stage, h, ckks_encode(
                    dataclasses.replace(agg, round_index=3)))
        return False

    fed.channel.ignore = ignore
    rows = [fed.coordinator.run_round(1), fed.coordinator.run_round(2)]
    assert [r["clients_survived"] for r in rows] == [4, 4]
    assert asked == {"upload-again": None, "r1-same-again": None, "r1-subset": None, "r2-same-again": None,
                     "r2-subset": None, "r2-round-1-aggregate": None, "r2-labelled-round-3": None}
    refusals = [r.getMessage() for r in caplog.records if "CKKS_DECRYPT refused" in r.getMessage()]
    assert len(refusals) == 6
    assert sum("already released under this key (D4)" in m for m in refusals) == 4          # same again, subset
    assert sum("not the current round 2" in m for m in refusals) == 2                     # round 1's, round 3's
    decryptor = min(ckks_decode(aggregates[1]).survivors)
    assert ckks_decode(aggregates[1]).generation == ckks_decode(aggregates[2]).generation   # one key, two rounds
    assert answered(fed, Stage.CKKS_DECRYPT, decryptor) == 2                 # one sum per round
    assert answered(fed, Stage.CKKS_UPLOAD, 2) == 2
    assert isinstance(ckks_decode(aggregates[1]), AggregateMsg)
    for h in ALL:   # the CKKS upload is the round's first release; the masked input adds no second charge
        assert view(fed.ledger(h)) == [("released", 1, 3, None), ("settled", 1, 4, None),
                                       ("released", 2, 3, None), ("settled", 2, 4, None)]


@pytest.mark.parametrize("case", ["another-round", "cohort-beyond-the-plan", "below-its-minimum", "another-key"])
def test_h6_a_ckks_upload_request_that_differs_from_the_plan_gets_no_ciphertexts(make, case):
    changes = {"another-round": {"round": 2}, "cohort-beyond-the-plan": {"cohort": (1, 2, 3, 4, 5)},
               "below-its-minimum": {"cohort": (1, 2)}, "another-key": {"key_id": "0" * 64}}[case]

    def tamper(r, stage, h, payload):   # holder 2: not the cohort's decryptor (min = 1, ckks.md D5)
        if stage == Stage.CKKS_UPLOAD and h == 2:
            return encode(dataclasses.replace(decode_as(payload, CkksUploadRequest), **changes))
        return payload

    fed = make(*CKKS, tamper=tamper)
    row = fed.coordinator.run_round(1)
    assert answered(fed, Stage.CKKS_UPLOAD, 2) == 0 and answered(fed, Stage.SECAGG_MASKED, 2) == 0
    assert fed.ledger(2) == [] and row["clients_survived"] == 3     # the others: CKKS, then the masked sum


def test_a_forked_child_does_not_inherit_the_mask_pools():
    """The mask threads of a parent do not exist in a forked child: it must make its own, not queue on theirs."""
    import multiprocessing as mp
    from concurrent.futures import ThreadPoolExecutor

    from securefed.federation import holder as holder_mod

    pool = ThreadPoolExecutor(max_workers=2)
    holder_mod._POOLS[-1] = pool                     # a size no holder asks for, so no real pool is shadowed
    try:
        ctx = mp.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=_child_pools, args=(q,))
        p.start()
        p.join(60)
        assert p.exitcode == 0 and q.get(timeout=5) == []
    finally:
        holder_mod._POOLS.pop(-1, None)
        pool.shutdown()


def _child_pools(q) -> None:
    from securefed.federation import holder as holder_mod

    q.put(sorted(holder_mod._POOLS))


def test_a_holder_in_the_ckks_part_only_is_charged_in_the_servers_ledger(make):
    """ckks+secagg sums the CKKS part over A and the masked part over B ⊆ A. Holder 4 uploads its CKKS part (decrypted
    into the model) and then its masked input is lost: it is in A \\ B. The server's ledger charged only B (stop-33
    review); now its entry lists A as the survivors, holder 4 as included, and the row names it."""
    central = ("privacy.mode=central", "privacy.mechanism=gaussian", "privacy.noise_multiplier=1.0", "privacy.clip=1.0")
    fed = make(*CKKS, *central, ignore=lambda r, s, h, reply: s == Stage.SECAGG_MASKED and h == 4)
    row = fed.coordinator.run_round(1)
    assert answered(fed, Stage.CKKS_UPLOAD, 4) == 1 and row["clients_survived"] == 3
    assert row["ckks_only"] == [4] and row["secagg_dropped"] == [4] and "aborted" not in row
    (server,) = fed.coordinator.privacy.ledger.entries
    assert server["survivors"] == [1, 2, 3, 4] and server["n_survivors"] == 4
    assert server["n_masked"] == 3 == fed.ledger(1)[-1]["survivors"]      # what 1–3 settle at: the masked sum's count
    kept = {h: fed.coordinator.privacy._holder(h)[0].entries for h in ALL}   # the server's view of each holder
    assert [kept[h][0]["status"] for h in ALL] == ["included"] * 4
    assert view(fed.ledger(4)) == [("released", 1, fed.ledger(4)[0]["survivors"], None)]   # its own: released once


@pytest.mark.parametrize("mode", ["distributed", "central", "none"])
def test_under_holder_level_dp_no_training_loss_or_exact_clip_fraction_leaves_a_holder(make, mode):
    """The report audit (stop 34): holders sent their exact training loss in every mode, and metrics.jsonl published it
    and each round's exact clip fraction — data the DP guarantee does not cover (the distributed coordinator is not
    trusted with it; the central one published it). Now the loss is sent only without DP; the exact clip fraction
    is published only without DP (the ledger's noised one stays)."""
    extra = {"distributed": DP, "central": ("privacy.mode=central", "privacy.mechanism=gaussian",
                                            "privacy.noise_multiplier=1.0", "privacy.clip=1.0"), "none": ()}[mode]
    fed = make(*extra)
    row = fed.coordinator.run_round(1)
    losses = [decode_as(e.reply, Ready).loss for e in fed.channel.sent(stage=Stage.PLAN, answered=True)]
    assert len(losses) == 4 and "aborted" not in row
    if mode == "none":
        assert all(isinstance(x, float) for x in losses) and row["train_loss"] is not None
        assert row["clip_fraction"] is not None
    else:
        assert losses == [None] * 4 and row["train_loss"] is None and row["clip_fraction"] is None


def test_a_holder_whose_training_diverged_says_so_instead_of_dropping_silently(make):
    """The report audit: at lr 1000 every round aborted and the holders, whose updates were not finite, dropped out
    without a word (a log line of their own). Each now refuses the Plan with the reason, which the round records.
    lr 1e30: the first AdamW step puts every weight near ±1e30, the second step's forward overflows, so the update
    is not finite on any library version (at lr 1000 whether it overflows depends on the attention kernel)."""
    fed = make("train.lr=1e30", "train.warmup_steps=0")
    row = fed.coordinator.run_round(1)
    assert "aborted" in row and row["refusals"]
    assert all("its local training diverged" in why for why in row["refusals"].values())
    (entry,) = fed.ledger(1)
    assert entry["status"] == "refused" and entry["reason"].startswith("its local training diverged")


# ------------------------------------------------------------------------- the plain upload's words
@pytest.mark.parametrize("clip", [1e-4, 1e6])
def test_a_plain_upload_is_the_weighted_clipped_update_to_the_bit(make, clip):
    """Stop 43: a plain round's holder weights and clips its own Δ in place (no fresh vectors), and the coordinator
    reads an update within C where it arrived. The words sent are still exactly l2_clip(w·Δ) of the Δ trained —
    every update clipped (C 1e-4) and none (C 1e6) — and the coordinator's sum is their float64 sum, exactly."""
    import numpy as np

    from securefed.privacy.clipping import l2_clip

    fed = make("aggregation.mode=plain", f"privacy.clip={clip}", "federation.weighting=tokens",
               "federation.holder_local_steps=[2,1,1,1]")
    trained = {}
    for h, holder in fed.holders.items():
        tr = holder.trainer
        run = tr.train_round

        def keep(theta, *a, h=h, run=run, **kw):
            up = run(theta, *a, **kw)
            trained[h] = up.delta.numpy().copy()          # Δ as trained, before the holder weights it
            return up
        tr.train_round = keep
    before = fed.coordinator.outer.params.clone()
    row = fed.coordinator.run_round(1)
    assert row["clients_survived"] == 4 and set(trained) == set(ALL)
    want_sum = np.zeros(trained[1].shape[0])
    weights = {}
    for h in ALL:
        (plan,) = fed.channel.sent(stage=Stage.PLAN, holder=h)
        weights[h] = decode_as(plan.payload, Plan).weight
        want, info = l2_clip(trained[h] * np.float32(weights[h]), clip)
        assert info.clipped == (clip < 1)
        (up,) = fed.channel.sent(stage=Stage.PLAIN_UPLOAD, holder=h)
        assert up.reply == want.tobytes()
        want_sum += want
    assert weights == {1: 1.0, 2: 0.5, 3: 0.5, 4: 0.5}                 # weighted by K·B tokens
    mean = (want_sum.astype(np.float32) / np.float32(sum(weights.values()))).astype(np.float32)
    # FedAvg outer lr 1 (the tiny federation's): θ_{r+1} = θ_r − mean, so the step taken is the exact mean
    assert np.array_equal((before - fed.coordinator.outer.params).numpy(), (before.numpy() - (before.numpy() - mean)))


# ------------------------------------------------------------------------- stages a holder of a mode never answers
_PROBES = {   # a payload of each kind a coordinator could publish at any stage number (a gRPC holder fetches any later one)
    "garbage": b"\x00\xffSFFM" * 7, "empty": b"",
    "CkksRotate": lambda r: encode(__import__("securefed.federation.messages", fromlist=["CkksRotate"]).CkksRotate(
        r, 1, (1, 2, 3, 4))),
    "CkksUploadRequest": lambda r: encode(CkksUploadRequest(r, 1, "k", (1, 2, 3, 4))),
    "UnmaskRequest": lambda r: secagg_encode(__import__("securefed.secagg.messages", fromlist=["UnmaskRequest"])
                                             .UnmaskRequest((1, 2, 3), (), ())),
}


@pytest.mark.parametrize("mode", ["secagg", "plain", "ckks+secagg"])
def test_a_stage_of_another_mode_or_before_the_plan_is_silence_never_a_traceback(make, mode, caplog):
    """federation.md §4.2 ("a logged refusal or silence — never a traceback"). A review published other modes' stages
    to a holder: CKKS stages reached `self.ckks` (None) of a secagg or plain holder, secure-aggregation stages a plain
    holder's `secagg_stages("plain")` (KeyError), CKKS_UPLOAD before the Plan `rs.spec` (None) — AttributeError /
    KeyError ended `securefed client` with a traceback. Every stage × payload, before the model, after it, and (for
    the other modes' stages) after the honest Plan: silence, nothing in the ledger; the round then goes on honestly."""
    from securefed.federation.stages import holder_stages

    fed = make(*{"secagg": (), "plain": ("aggregation.mode=plain",),
                 "ckks+secagg": ("aggregation.mode=ckks+secagg", "aggregation.ckks.enabled=true")}[mode])
    h = fed.holders[1]
    own = holder_stages(mode)

    def probe(stages):
        for stage in stages:
            for name, p in _PROBES.items():
                assert h.handle(1, int(stage), p(1) if callable(p) else p) is None, (stage, name)

    assert decode_as(h.handle(1, Stage.OFFER, offer(fed, 1)[0]), Decision).accept
    later = [s for s in Stage if s > Stage.PLAN]
    probe(later)                                               # before the model: no plan yet, every later stage
    h.handle(1, Stage.MODEL, fed.model_bytes())
    probe(later)                                               # trained, no plan yet
    assert fed.ledger(1) == []
    assert isinstance(decode(h.handle(1, Stage.PLAN, plan(fed, 1)[0])), Ready)
    probe([s for s in Stage if s not in own])                  # planned: another mode's stages
    assert fed.ledger(1) == []                                 # nothing released, nothing refused
    assert "is not a stage of aggregation" in caplog.text and "before this holder accepted a plan" in caplog.text
    if mode == "plain":                                        # the round is intact: the honest upload still goes
        assert h.handle(1, Stage.PLAIN_UPLOAD, b"") is not None
        assert view(fed.ledger(1)) == [("released", 1, 4, None)]


@pytest.mark.parametrize("mode", [(), ("aggregation.mode=plain",)])
def test_a_refused_plan_is_final_and_repeated_plans_do_not_grow_the_ledger(make, mode):
    """A review (in-process and Ray channels, where a coordinator can ask one stage twice): after a Plan refusal
    (its signed `refused` entry, "holder 1 refuses round 1") a second Plan of the same round was accepted and the
    round released — the ledger read refused → released → settled — and each refusable Plan appended one more signed,
    fsync'd entry (300 Plans: 300 entries, 245 kB). A refusal is final; later Plans of the round get silence."""
    fed = make(*mode, policies={1: {"min_cohort": 3}} if mode else None)   # (plain's own default minimum is 2)
    h = fed.holders[1]
    assert decode_as(h.handle(1, Stage.OFFER, offer(fed, 1)[0]), Decision).accept
    h.handle(1, Stage.MODEL, fed.model_bytes())
    bad = plan(fed, 1, cohort=(1, 2))[0]                       # 2 participants: below the holder's minimum of 3
    assert "minimum" in refusal(h.handle(1, Stage.PLAN, bad), 1)
    assert [h.handle(1, Stage.PLAN, bad) for _ in range(20)] == [None] * 20
    assert h.handle(1, Stage.PLAN, plan(fed, 1)[0]) is None    # the honest plan, after the refusal: no Ready
    if mode:
        assert h.handle(1, Stage.PLAIN_UPLOAD, b"") is None    # and nothing to release
    assert [e["status"] for e in fed.ledger(1)] == ["refused"]


def test_an_offer_for_a_round_the_run_does_not_have_is_ignored_and_moves_nothing(make):
    """A review's coordinator offered round 2³¹ − 1: the holder accepted and saved next_round = 2³¹, so it refused
    every real round after ("already taken part in"). A round beyond the Welcome's `rounds` is silence: nothing saved,
    nothing in the ledger, and round 1 is still taken up."""
    fed = make()
    h = fed.holders[1]
    for r in (h.welcomed.rounds + 1, 2**31 - 1):
        assert h.handle(r, Stage.OFFER, offer(fed, r)[0]) is None
    assert fed.ledger(1) == [] and h.next_round == 1
    assert not (h.state_dir / "holder_state.json").exists() or state(h)["next_round"] == 1
    assert decode_as(h.handle(1, Stage.OFFER, offer(fed, 1)[0]), Decision).accept
    assert state(h)["next_round"] == 2
