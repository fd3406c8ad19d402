"""A malicious holder — enrolled, with a valid identity key — against the coordinator and the honest holders
(threat_models/secure_aggregation.md SA-21): the real Coordinator and Holders in process, one holder's replies
rewritten after its honest Holder.handle made them."""

from __future__ import annotations

import numpy as np

from securefed.federation.stages import Stage
from securefed.primitives import shamir
from securefed.secagg import decode as secagg_decode
from securefed.secagg import encode as secagg_encode
from securefed.secagg.messages import UnmaskShares

DP = ("privacy.mode=distributed", "privacy.mechanism=ddgauss", "privacy.noise_multiplier=1.0", "privacy.clip=1.0")


def _wrong_unmask_shares(fed, h: int) -> None:
    """Holder ``h`` answers the UnmaskRequest with every share replaced by another field element."""
    handle, rng = fed.holders[h].handle, np.random.default_rng(11)

    def lie(r, stage, payload):
        reply = handle(r, stage, payload)
        if stage != Stage.SECAGG_UNMASK or reply is None:
            return reply
        m = secagg_decode(reply)
        wrong = tuple((j, k, ((int.from_bytes(s, "big") + int(rng.integers(1, 2**62))) % shamir.PRIME).to_bytes(66, "big"))
                      for j, k, s in m.shares)
        return secagg_encode(UnmaskShares(m.sender, wrong))
    fed.holders[h].handle = lie


def test_a_holder_sending_wrong_unmask_shares_neither_aborts_the_round_nor_changes_its_sum(tmp_path, fed_cache):
    """secagg.md §6.4: holder 1 (the lowest id: its shares are among the first t) sends wrong unmasking shares
    after every holder released its masked input. It used to abort the round ("inconsistent shares"): each honest
    holder's ledger charged a release with no sum released, every round, by one holder. Now the sum is rebuilt from
    the others' shares: the round completes with all 4, and the model is bit for bit the honest run's."""
    from securefed.audit.federation_harness import tiny_federation

    honest = tiny_federation(tmp_path / "honest", overrides=DP, cache_dir=fed_cache)
    honest_row = honest.coordinator.run_round(1)
    fed = tiny_federation(tmp_path / "attacked", overrides=DP, cache_dir=fed_cache)
    _wrong_unmask_shares(fed, 1)
    row = fed.coordinator.run_round(1)
    assert "aborted" not in row and "charged_though_aborted" not in row
    assert row["clients_survived"] == honest_row["clients_survived"] == 4
    assert fed.model_bytes() == honest.model_bytes()
    assert [e["status"] for e in fed.ledger(2)] == ["released", "settled"]


def _lying_ready(fed, h: int, **claims) -> None:
    """Holder ``h`` answers the Plan with a Ready whose claims are replaced (its update is the honest one)."""
    from dataclasses import replace

    from securefed.federation.messages import Ready, decode, encode

    handle = fed.holders[h].handle

    def lie(r, stage, payload):
        reply = handle(r, stage, payload)
        if stage != Stage.PLAN or reply is None:
            return reply
        msg = decode(reply)
        return encode(replace(msg, **claims)) if isinstance(msg, Ready) else reply
    fed.holders[h].handle = lie


def test_a_holders_token_and_loss_claims_cannot_corrupt_the_round_record(tmp_path, fed_cache):
    """Two holders claim 2**53 - 1 tokens and a loss of 1e308 (the largest the message takes). tokens_seen became
    1.8e16 and the mean loss inf (a false "training diverged" warning). The claims are the holders' own and enter
    only the metrics: one that no honest holder can make (tokens not K·B·T on 1..1024 devices, a negative loss) is
    replaced, and the mean of finite claims stays finite. The updates are unaffected: the model is the honest run's."""
    import math

    from securefed.audit.federation_harness import tiny_federation

    honest = tiny_federation(tmp_path / "honest", cache_dir=fed_cache)
    honest_row = honest.coordinator.run_round(1)
    fed = tiny_federation(tmp_path / "attacked", cache_dir=fed_cache)
    _lying_ready(fed, 1, tokens=2**53 - 1, loss=1e308)
    _lying_ready(fed, 2, tokens=2**53 - 1, loss=1e308)
    _lying_ready(fed, 3, loss=-5.0)
    row = fed.coordinator.run_round(1)
    assert row["clients_survived"] == honest_row["clients_survived"] == 4
    c = honest.coordinator
    assert honest_row["tokens_seen"] == 4 * c.local_steps(1) * c.batch_size(1) * c.cfg.data.seq_len   # honest: kept
    assert row["tokens_seen"] == honest_row["tokens_seen"]
    assert math.isfinite(row["train_loss"]) and row["train_loss"] > 1e307   # the claims' mean, not inf
    assert fed.model_bytes() == honest.model_bytes()


CKKS = ("aggregation.mode=ckks+secagg", "aggregation.ckks.enabled=true", "federation.weighting=uniform",
        "privacy.clip=1.0")


def test_a_ckks_decryptor_releasing_a_poisoned_sum_is_refused_and_the_model_does_not_move(tmp_path, fed_cache):
    """ckks.md §5.3 D6: the decryptor (the cohort's smallest member, a holder) released whatever it liked as the CKKS
    sum, and the coordinator applied it if it was finite. Each upload is a part of an update clipped to C with weight
    ≤ 1, so a released sum longer than |A|·C (+ the §4.4 error) is refused: the round aborts, nothing is applied. An
    honest decryptor's sum passes: every ckks+secagg run of the suite goes through the same check (e.g.
    tests/runtime/test_simulate_e2e.py::test_hybrid_ckks_route_equals_plain_fedavg_within_documented_error)."""
    from securefed.audit.federation_harness import tiny_federation

    fed = tiny_federation(tmp_path / "attacked", overrides=CKKS, cache_dir=fed_cache)
    before = fed.model_bytes()
    handle = fed.holders[1].handle

    def poison(r, stage, payload):
        reply = handle(r, stage, payload)
        if stage != Stage.CKKS_DECRYPT or reply is None:
            return reply
        return (np.frombuffer(reply, dtype="<f8") + 10.0).astype("<f8").tobytes()   # every coordinate +10
    fed.holders[1].handle = poison
    row = fed.coordinator.run_round(1)
    assert "released a CKKS sum of norm" in row["aborted"]
    assert fed.model_bytes() == before
