"""The holder's own secure-aggregation floor (audit SEC-11, protocols/federation.md H6): the RoundStart must
run on the round, ring and cohort of the plan the holder accepted, with thresholds and graph degree its own
configuration gives for that cohort and a cohort no smaller than its minimum. A RoundStart that differs is
answered with silence and a logged refusal (``Holder.handle`` returns None) — nothing is released."""

from __future__ import annotations

import dataclasses
import logging

import pytest

from securefed.federation.coordinator import Coordinator
from securefed.federation.holder import Holder, session_context
from securefed.federation.inproc import InProcChannel
from securefed.federation.messages import Decision, Offer, Plan, Ready, decode, encode
from securefed.federation.simulation import holder_configs
from securefed.federation.stages import Stage
from securefed.privacy import read_ledger
from securefed.privacy.remote import round_spec
from securefed.runtime.config import load_run_config
from securefed.runtime.rundir import RunDir
from securefed.secagg import Roster, SecAggServer
from securefed.secagg import decode as secagg_decode
from securefed.secagg.messages import AdvertiseKeys
from securefed.secagg.messages import encode as secagg_encode
from securefed.transport.pki import load_identity, make_demo_pki

COHORT = (1, 2, 3, 4)
R = 1


@pytest.fixture(scope="module")
def plan(tmp_path_factory, fed_cache):
    """The coordinator's messages of round 1 for the cohort 1-4 (built by the real Coordinator's pieces)."""
    from securefed.federation.data import coordinator_data

    root = tmp_path_factory.mktemp("policy")
    cfg = load_run_config(overrides=["data.max_sources=4", "data.max_bytes_per_source=30000", "data.vocab_size=512",
                                     "data.seq_len=32", f"data.cache_dir={fed_cache}", "train.local_steps=1",
                                     "train.batch_size=2", "baseline=false", "deterministic_secrets=true"])
    lay = make_demo_pki(root / "pki", holders=4)
    roster = Roster.load(lay.roster)
    rd = RunDir(root / "run")
    rd.create(resume=False)
    coord = Coordinator(cfg, InProcChannel({}), rd, data=coordinator_data(cfg, progress=False), roster=roster,
                        identity=load_identity(lay.server_identity))
    theta = coord.outer.params.numpy().astype("<f4").tobytes()
    from securefed.federation.holder import model_sha256

    mhash = model_sha256(theta)
    t_min = coord._t_min(len(COHORT))
    offer = Offer(R, COHORT, mhash, round_spec(coord.privacy.begin_round(R, cohort=list(COHORT), dim=coord.dim,
                                                                        min_survivors=t_min)))
    rp = coord.privacy.begin_round(R, cohort=list(COHORT), dim=coord.dim, min_survivors=t_min)
    ctx = session_context(coord.run_id, bytes.fromhex(mhash))
    start = SecAggServer(config=cfg.aggregation.secagg, cohort=COHORT, vector_length=rp.encoded_dim, round_index=R,
                         session_context=ctx, roster=roster).round_start()
    return dict(cfg=cfg, lay=lay, roster=roster, root=root, welcome=coord.welcome_for(1), offer=encode(offer),
                theta=theta, plan=encode(Plan(R, round_spec(rp))), start=start)


@pytest.fixture
def holder(plan, tmp_path):
    """Holder 1 (minimum cohort 4) after OFFER of round 1: under secagg its next stage is SECAGG_START, before
    the model (protocols/federation.md §4.3)."""
    hc = holder_configs(plan["cfg"], plan["root"])[1]
    hc = dataclasses.replace(hc, state_dir=str(tmp_path / "h1"), policy=dataclasses.replace(hc.policy, min_cohort=4))
    h = Holder(hc, identity=load_identity(plan["lay"].holder_dir(1) / "identity.key"), roster=plan["roster"])
    h.welcome(plan["welcome"])
    assert decode(h.handle(R, Stage.OFFER, plan["offer"])) == Decision(R, 1, True)
    return h


def _start(plan, **changes) -> bytes:
    return secagg_encode(dataclasses.replace(secagg_decode(plan["start"]), **changes))


def test_round_start_on_the_planned_cohort_is_accepted(plan, holder):
    reply = holder.handle(R, Stage.SECAGG_START, plan["start"])
    assert isinstance(secagg_decode(reply), AdvertiseKeys)
    assert holder.handle(R, Stage.SECAGG_START, plan["start"]) is None        # one RoundStart a round


def test_round_start_after_the_model_is_refused_under_secagg(plan, holder, caplog):
    """The key stages come before training under secagg; a RoundStart after θ_r is out of order."""
    assert holder.handle(R, Stage.MODEL, plan["theta"]) is None
    assert isinstance(decode(holder.handle(R, Stage.PLAN, plan["plan"])), Ready)
    with caplog.at_level(logging.WARNING, logger="securefed.holder"):
        assert holder.handle(R, Stage.SECAGG_START, plan["start"]) is None
        assert holder.handle(R, Stage.CKKS_SECAGG_START, plan["start"]) is None   # the other mode's slot
    assert any("key stages come before the model" in m for m in caplog.messages), caplog.messages
    assert any("not a stage of aggregation 'secagg'" in m for m in caplog.messages), caplog.messages


@pytest.mark.parametrize("kw,why", [
    ({"cohort": tuple(range(1, 201))}, "cohort differs from the plan"),          # not drawn from the participants
    ({"cohort": (2, 3, 4), "degree": 2, "threshold": 2, "min_survivors": 2}, "cohort differs from the plan"),  # not us
    ({"cohort": (1, 2, 3), "degree": 2, "threshold": 2, "min_survivors": 2}, "below this holder's minimum"),
    ({"round_index": 4}, "round or cohort differs"),
    ({"ring_bits": 16}, "ring or cohort size"),
    ({"threshold": 2, "min_survivors": 2}, "thresholds or graph degree differ"),  # weaker than its own config (C1)
])
def test_round_start_that_differs_from_the_manifest_is_refused(plan, holder, caplog, kw, why):
    with caplog.at_level(logging.WARNING, logger="securefed.holder"):
        assert holder.handle(R, Stage.SECAGG_START, _start(plan, **kw)) is None
    assert any("SECAGG_START refused" in m and why in m for m in caplog.messages), caplog.messages
    assert not [e for e in read_ledger(holder.state_dir / "ledger.jsonl") if e["status"] == "released"]


def test_undecodable_round_start_is_refused(holder, caplog):
    with caplog.at_level(logging.WARNING, logger="securefed.holder"):
        assert holder.handle(R, Stage.SECAGG_START, b"\x00garbage") is None
    assert any("SECAGG_START refused" in m for m in caplog.messages)
