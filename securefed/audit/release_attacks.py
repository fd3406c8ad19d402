"""The release-twice attacks (protocols/federation.md §5), run against the real roles of the one engine.

Secure aggregation hides each update inside a sum; two sums over sets that differ by one holder give
that holder's update away, whatever the cryptography. So a malicious coordinator tries to get *two*
sums of the same data:

SEC-13  it refuses a holder's unmask-stage reply (the holder thinks its connection failed and joins
        again), then runs the released round r again, same θ_r, under a smaller cohort that is still
        above every holder's floor. Σ(1..4) − Σ(1..3) = Δ_4. Stopped by H7: the round index is
        persisted when a holder accepts it and every release stage is answered once.
SEC-14  it sends the CKKS decryptor a second aggregate of the same round (another subset) and, a round
        later, the old round's aggregate. Stopped by H9 (ckks/holder.py decrypt, D4).
SEC-15  it sends the second aggregate to *another* key holder, the smallest id of the subset: every
        key holder holds the same secret key and D4 is kept per holder. Stopped by D5 (ckks.md §5.3): the
        decryptor is min of the cohort it was itself asked to upload for, and re-sums only uploads signed
        for that cohort, so the sums of one round are over disjoint cohorts.

Each scenario drives ``Coordinator.run_round`` over the audit's ScriptedChannel (federation_harness)
and then plays the attacker by hand; the "what would leak" evidence is measured on the real sums, with
an instrument on the victim only to know the truth the attacker is after.
"""

from __future__ import annotations

import copy
import dataclasses
import tempfile
from pathlib import Path

import numpy as np

from securefed.audit.federation_harness import one_torch_thread, tiny_federation
from securefed.audit.findings import MITIGATED, VULNERABLE, Finding
from securefed.federation.stages import Stage

__all__ = ["coordinator_reruns_round", "decryptor_asked_for_several_sums", "key_holders_each_asked_for_one_sum",
           "CKKS_RUN"]

CKKS_RUN = ("aggregation.mode=ckks+secagg", "aggregation.ckks.enabled=true",
            "aggregation.ckks.rotate_key_every_rounds=2")   # one key generation for rounds 1-2


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _record_sums(coordinator) -> dict[int, np.ndarray]:
    """What the coordinator learns each round: the secure sum it decodes (it is the attacker)."""
    got: dict[int, np.ndarray] = {}
    real = coordinator._aggregate

    def spy(r, *a, **k):
        out = real(r, *a, **k)
        got[r] = np.asarray(out[0], dtype=np.float64)
        return out
    coordinator._aggregate = spy
    return got


def _record_updates(holder) -> dict[str, list]:
    """Instrument on the victim (evidence only): each Δ it trains, and how often it trains."""
    seen = {"delta": []}
    real = holder.trainer.train_round

    def spy(theta, **kw):
        up = real(theta, **kw)
        seen["delta"].append(up.delta.detach().cpu().numpy().astype(np.float64))   # wherever it was left (§6.6)
        return up
    holder.trainer.train_round = spy
    return seen


def _rerun(fed, r: int, cohort: tuple[int, ...], theta: bytes, spool: Path) -> dict:
    """The malicious coordinator runs round r again over ``cohort`` with the same θ, pushing every stage
    whatever the holders answer; returns what it got."""
    from securefed.federation.aggregation import MAX_CONTROL, SecureSession
    from securefed.federation.holder import model_sha256, session_context
    from securefed.federation.messages import Decision, MessageError, Offer, Plan, decode, encode
    from securefed.privacy.remote import round_spec
    from securefed.secagg import SecAggAborted

    c, ch, dl = fed.coordinator, fed.channel, fed.coordinator.opt.deadlines
    rp = c.privacy.begin_round(r, cohort=list(cohort), dim=c.dim, min_survivors=c._t_min(len(cohort)))
    spec, mhash = round_spec(rp), model_sha256(theta)
    out = {"decisions": {}, "sum": None, "aborted": None}
    offer = encode(Offer(r, cohort, mhash, spec))
    for h, data in ch.exchange(r, Stage.OFFER, {h: offer for h in cohort}, deadline=dl.control,
                               max_reply=MAX_CONTROL).items():
        try:
            d = decode(data)
            out["decisions"][h] = (d.accept, d.reason) if isinstance(d, Decision) else ("?", type(d).__name__)
        except MessageError as e:
            out["decisions"][h] = ("?", str(e))
    session = SecureSession(ch, r, list(cohort), length=rp.encoded_dim, config=c.cfg.aggregation.secagg,
                            roster=fed.roster, context=session_context(c.run_id, bytes.fromhex(mhash)), deadlines=dl,
                            spool=spool, transcript=None, mode="secagg")
    try:       # as if every holder had accepted: the key stages, θ, the plan, then the masked sum
        session.keys()
        ch.send(r, Stage.MODEL, {h: theta for h in cohort})
        ch.exchange(r, Stage.PLAN, {h: encode(Plan(r, spec)) for h in cohort}, deadline=dl.train, max_reply=MAX_CONTROL)
        out["sum"] = session.finish(list(cohort))
    except SecAggAborted as e:
        out["aborted"] = str(e)
    return out


def coordinator_reruns_round(workdir: str | Path | None = None) -> Finding:
    """SEC-13 (module doc). 4 holders, secagg, no DP; the target is holder 4, the smaller cohort {1, 2, 3}
    (3 = every holder's minimum cohort)."""
    from securefed.privacy.clipping import l2_clip

    target, smaller = 4, (1, 2, 3)
    with tempfile.TemporaryDirectory() as tmp, one_torch_thread():
        root = Path(workdir or tmp)
        ignored = []

        def ignore(r, stage, h, reply):       # holder 1's unmasking shares "never arrived": it will come back
            if stage == Stage.SECAGG_UNMASK and h == 1:
                ignored.append(r)
                return True
            return False

        fed = tiny_federation(root / "attack", ignore=ignore)
        c = fed.coordinator
        sums = _record_sums(c)
        truth = _record_updates(fed.holders[target])
        theta1 = fed.model_bytes()
        row1 = c.run_round(1)
        holder1 = fed.restart_holder(1)                            # the holder's process joins again
        holder1.welcome(c.welcome_for(1))
        trained = {h: _record_updates(fed.holders[h]) for h in smaller}
        start = len(fed.channel.log)
        second = _rerun(fed, 1, smaller, theta1, root / "spool")
        log = fed.channel.log[start:]
        answered = {s.name: sorted(e.holder for e in log if e.stage == s and e.reply is not None)
                    for s in (Stage.OFFER, Stage.PLAN, Stage.SECAGG_START, Stage.SECAGG_MASKED)}
        ledgers = {h: [[e["status"], e["round"]] for e in fed.ledger(h)] for h in fed.holders}

        # what H7 prevents: holders that come back with the state they had before round 1 (no persisted
        # participation) send the same Δ again; the coordinator subtracts the two sums
        clean = tiny_federation(root / "without-h7")
        clean.coordinator.sample_cohort = lambda available: list(smaller)
        sums_b = _record_sums(clean.coordinator)
        clean.coordinator.run_round(1)
    delta4 = l2_clip(truth["delta"][0].astype(np.float32), c.cfg.privacy.clip)[0].astype(np.float64)
    leak = sums[1] - sums_b[1]
    refused_all = all(not a and "already taken part in" in why for a, why in second["decisions"].values()) \
        and sorted(second["decisions"]) == list(smaller)
    second_masked = answered["SECAGG_MASKED"]
    releases = {h: sum(1 for st, r in led if st == "released" and r == 1) for h, led in ledgers.items()}
    ok = refused_all and not second_masked and second["sum"] is None and all(n == 1 for n in releases.values()) \
        and not any(t["delta"] for t in trained.values())
    ev = {"round_1_survivors": row1["clients_survived"], "holder_1_unmask_reply_ignored": bool(ignored),
          "second_offer_decisions": {str(h): {"accept": a, "reason": why} for h, (a, why) in second["decisions"].items()},
          "second_attempt_replies_by_stage": answered, "second_attempt_trained": {str(h): len(t["delta"]) for h, t in trained.items()},
          "second_masked_inputs": len(second_masked), "second_secure_sum": "aborted: " + str(second["aborted"])
          if second["sum"] is None else f"revealed over {list(second['sum'].survivors)}",
          "holder_ledgers_round_1": {str(h): led for h, led in ledgers.items()},
          "released_entries_round_1": {str(h): n for h, n in releases.items()},
          "without_h7": {"cosine(sum_1234 - sum_123, delta_4)": round(_cosine(leak, delta4), 9),
                         "relative_error": float(np.linalg.norm(leak - delta4) / np.linalg.norm(delta4)),
                         "delta_4_norm": float(np.linalg.norm(delta4)), "dim": int(delta4.size)}}
    wo = ev["without_h7"]
    return Finding(
        "SEC-13", "Coordinator re-runs a released round under a smaller cohort", MITIGATED if ok else VULNERABLE,
        (f"Round 1 ran over holders 1-4 with holder 1's unmasking reply ignored; holder 1 restarted and joined "
         f"again, and the coordinator offered round 1 again (same θ) to {list(smaller)}, then pushed the model, "
         f"the plan and a full secure-aggregation round regardless. Every holder refused the offer (\"round 1 was "
         f"already taken part in\", H7), none trained, none sent keys or a masked input, the second sum aborted, "
         f"and each ledger holds one release of round 1. "
         if ok else "A holder took part in round 1 a second time: the coordinator can subtract the two sums. ")
        + (f"Without H7 (holders back with their pre-round state) the difference of the two sums is holder 4's "
           f"update: cosine {wo['cosine(sum_1234 - sum_123, delta_4)']:.6f}, relative error "
           f"{wo['relative_error']:.1e} over {wo['dim']} coordinates."),
        ev, ("SYS-23", "TR-13"),
        fix="" if ok else ("federation/holder.py: persist the next round at acceptance and answer each release "
                           "stage once per round (H7)."))


def _ckks_run(root: Path, attack):
    """A ckks+secagg federation whose CKKS_DECRYPT replies go through ``attack(fed, r, decryptor, agg, reply)``;
    also records each holder's CKKS slice at upload (evidence of what a leak would reveal)."""
    from securefed.ckks.messages import decode as ckks_decode

    truth: dict[tuple[int, int], np.ndarray] = {}
    box = {}

    def tamper(r, stage, h, payload):
        if stage == Stage.CKKS_UPLOAD and box["fed"].holders[h]._round is not None:
            truth[(r, h)] = np.array(box["fed"].holders[h]._round.ckks_part, dtype=np.float64)
        return payload

    def ignore(r, stage, h, reply):
        if stage == Stage.CKKS_DECRYPT:
            (sent,) = [e for e in box["fed"].channel.sent(stage=stage, holder=h, round=r) if not e.extra]
            attack(box["fed"], r, h, ckks_decode(sent.payload), sent.payload, np.frombuffer(reply, "<f8"))
        return False

    fed = box["fed"] = tiny_federation(root, overrides=CKKS_RUN, tamper=tamper, ignore=ignore)
    return fed, truth


def decryptor_asked_for_several_sums(workdir: str | Path | None = None) -> Finding:
    """SEC-14 (module doc): the same decryptor, a second sum of round 1 (same aggregate again; the subset
    without holder 4), then in round 2 (same key generation) round 1's aggregate."""
    from securefed.ckks.messages import encode as ckks_encode

    asked, honest, counterfactual = {}, {}, {}

    def attack(fed, r, d, agg, raw, total):
        honest[r] = (d, agg, raw, total)
        subset = dataclasses.replace(agg, survivors=agg.survivors[:-1], uploads=agg.uploads[:-1])
        asked[f"round {r}: the same aggregate again"] = fed.channel.ask(r, Stage.CKKS_DECRYPT, d, raw)
        asked[f"round {r}: the subset without holder {agg.survivors[-1]}"] = fed.channel.ask(
            r, Stage.CKKS_DECRYPT, d, ckks_encode(subset))
        if r == 2:
            asked["round 2: round 1's aggregate"] = fed.channel.ask(r, Stage.CKKS_DECRYPT, d, honest[1][2])
        if r == 1:   # evidence only: a copy of the decryptor's key *without* its D4 record decrypts the subset
            h = fed.holders[d]
            role = copy.copy(h.ckks)
            role._released = set()
            counterfactual["subset"] = role.decrypt(subset, length=h._route_plan.ckks_size, cohort=h._round.ckks_cohort,
                                                    roster=h._ckks_roster, round_index=r,
                                                    entropy=h.entropy.for_party(r, d, "ckks-flood-copy"))
            counterfactual["excluded"] = agg.survivors[-1]

    with tempfile.TemporaryDirectory() as tmp, one_torch_thread():
        fed, truth = _ckks_run(Path(workdir or tmp), attack)
        rows = [fed.coordinator.run_round(1), fed.coordinator.run_round(2)]
        gens = [honest[r][1].generation for r in (1, 2)]
        decryptors = [honest[r][0] for r in (1, 2)]
        decrypted = {h: len(fed.channel.sent(stage=Stage.CKKS_DECRYPT, holder=h, answered=True)) for h in fed.holders}
    x = counterfactual["excluded"]
    leak = honest[1][3] - counterfactual["subset"]
    ok = all(v is None for v in asked.values()) and all(rw["clients_survived"] == 4 for rw in rows) \
        and sum(decrypted.values()) == 2
    ev = {"decryptors": decryptors, "key_generations": gens, "honest_rounds_survivors": [rw["clients_survived"] for rw in rows],
          "extra_requests_answered": {k: v is not None for k, v in asked.items()},
          "sums_released_per_holder": {str(h): n for h, n in decrypted.items()},
          "without_h9": {f"max|sum_all - sum_subset - x_{x}|": float(np.max(np.abs(leak - truth[(1, x)]))),
                         f"cosine(sum_all - sum_subset, x_{x})": round(_cosine(leak, truth[(1, x)]), 9),
                         "ckks_slice_length": int(leak.size)}}
    wo = next(iter(v for k, v in ev["without_h9"].items() if k.startswith("max")))
    return Finding(
        "SEC-14", "CKKS decryptor asked for several sums of a round", MITIGATED if ok else VULNERABLE,
        (f"The coordinator asked holder {decryptors[0]}, the decryptor, for round 1's sum again, for the sum of the "
         f"subset without holder {x}, and in round 2 (same key generation) for round 1's aggregate: it answered "
         f"only the first request of each round (H9, D4 in ckks/holder.py decrypt). " if ok else
         "The decryptor released a second sum of a round. ")
        + (f"Without D4, the two sums of round 1 give holder {x}'s CKKS slice away (max error {wo:.1e} over "
           f"{ev['without_h9']['ckks_slice_length']} values). Another key holder asked for the subset is SEC-15."),
        ev, ("CK-14", "SYS-24"),
        fix="" if ok else "ckks/holder.py decrypt: one sum per (generation, round), of the current round only (D4).")


def key_holders_each_asked_for_one_sum(workdir: str | Path | None = None) -> Finding:
    """SEC-15 (module doc): the decryptor releases round 1's sum; the coordinator then sends the subset
    without the decryptor to the next key holder, which is the smallest id of that subset."""
    from securefed.ckks.messages import encode as ckks_encode

    got = {}

    def attack(fed, r, d, agg, raw, total):
        subset = dataclasses.replace(agg, survivors=agg.survivors[1:], uploads=agg.uploads[1:])
        other = min(subset.survivors)
        reply = fed.channel.ask(r, Stage.CKKS_DECRYPT, other, ckks_encode(subset))
        got.update(decryptor=d, other=other, total=total, subset=None if reply is None else np.frombuffer(reply, "<f8"))

    with tempfile.TemporaryDirectory() as tmp, one_torch_thread():
        fed, truth = _ckks_run(Path(workdir or tmp), attack)
        row = fed.coordinator.run_round(1)
    d = got["decryptor"]
    ev = {"decryptor": d, "second_key_holder_asked": got["other"], "round_survivors": row["clients_survived"],
          "second_key_holder_decrypted": got["subset"] is not None}
    if got["subset"] is not None:
        leak = got["total"] - got["subset"]
        ev.update({f"max|sum_all - sum_without_{d} - x_{d}|": float(np.max(np.abs(leak - truth[(1, d)]))),
                   f"cosine(difference, x_{d})": round(_cosine(leak, truth[(1, d)]), 9),
                   f"norm(x_{d})": float(np.linalg.norm(truth[(1, d)])), "ckks_slice_length": int(leak.size)})
    vulnerable = got["subset"] is not None
    err = ev.get(f"max|sum_all - sum_without_{d} - x_{d}|")
    return Finding(
        "SEC-15", "Several CKKS key holders each asked for one sum of a round", VULNERABLE if vulnerable else MITIGATED,
        (f"Holder {d} decrypted round 1's aggregate; the coordinator sent the same round's aggregate without holder "
         f"{d} to holder {got['other']} (the smallest id left, so the decryptor rule min(survivors) names it). It "
         f"decrypted it (its own D4 record is empty), and the difference of the two sums is holder {d}'s CKKS slice "
         f"(max error {err:.1e}). D4 is kept per holder while every key holder holds the same secret key: with k key "
         f"holders a coordinator can collect k sums of one round (one per smallest id) and peel updates one by one."
         if vulnerable else
         f"Holder {d} decrypted round 1's aggregate; the coordinator sent the same round's aggregate without holder "
         f"{d} to holder {got['other']}, the smallest id left. It refused (ckks.md §5.3 D5): it is not min of the "
         f"cohort it was itself asked to upload for, and the uploads in that aggregate were signed for that cohort, "
         f"so no second sum of the round can be formed over a subset of it."),
        ev, ("CK-15", "SYS-24", "SYS-19"),
        fix=("protocols/ckks.md §5 + ckks/holder.py + ckks/server.py: bind the cohort of the holder's "
             "CkksUploadRequest into its signed upload statement; the decryptor is min(that cohort) (not "
             "min(survivors), which the coordinator chooses) and, in verified mode, re-sums only uploads signed "
             "for its own cohort. A holder uploads once per round (H7), so two sums of one round can then only be "
             "over disjoint sets. Requiring the decryptor to be min of its own request's cohort alone stops this "
             "run but not a coordinator that sends different cohorts in different upload requests.") if vulnerable else "")
