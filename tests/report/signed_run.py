"""A small signed run directory, as the round engine writes it (protocols/dp.md §7): coordinator-signed
server ledger and per-holder views, holder-signed own ledgers (released before sending, settled after),
privacy/keys.json, a checkpoint and summary.json that anchor the head."""

import json
from dataclasses import replace

import numpy as np
import torch
import yaml

from securefed.primitives.keys import generate_identity
from securefed.primitives.rng import DeterministicEntropy
from securefed.privacy import DPConfig, PrivacySession
from securefed.privacy.accountant import accountant_version
from securefed.privacy.holder_ledger import holder_epsilon, record_level_entry
from securefed.privacy.ledger import Ledger

RUN_ID = "ab" * 16
DIM = 64


def _own_entry(s, rp, h, status, event, survivors, entries, cap=None, record_level=None):
    e = {"version": 1, "role": "holder", "run_id": RUN_ID, "holder_id": h, "round": rp.round_index, "status": status,
         "event": event, "cap": cap, "delta": s.delta, "accountant": "rdp", "accountant_version": accountant_version("rdp"),
         "mode": s.config.mode, "mechanism": s._mechanism, "clip": rp.clip_bound, "noise_multiplier": rp.noise_multiplier,
         "ring_bits": s.config.ring_bits, "survivors": survivors, "reason": None}
    if record_level is not None:
        e["record_level"] = record_level
    e["epsilon"] = holder_epsilon(entries + [e], s.delta)
    return e


def make_signed_run(rd, *, rounds=4, signed=True, cfg=None, population=6, cohort=(1, 2, 3, 4), drop_last_holder_at=None,
                    sampling="fixed", cohorts=None, dp_sgd_steps=None, abort_rounds=(), server_caps=True, config=None, own_cap=20.0,
                    dp_sgd_units=None):
    """``cohorts``: each round's cohort (default: ``cohort`` every round, whose size is the planned one).
    ``dp_sgd_steps``: record-level DP-SGD steps per round (σ = 1, q = 0.01) signed into each release, as a DP-SGD
    holder does. ``abort_rounds``: rounds in which every participant released but none sent its masked input
    (the round aborts, the model does not move). ``server_caps=False``: the coordinator's session has no holder cap,
    as the engine runs it (the caps live only in the holders' own ledgers). ``config``: merged into config.yaml.
    ``dp_sgd_units``: {holder: unit} each holder signs with its DP-SGD steps (default: sequence)."""
    cfg = cfg or DPConfig(mode="distributed", noise_multiplier=1.0, clip=1.0, holder_epsilon_cap=20.0, delta=1e-3)
    cohorts = [tuple(cohort)] * rounds if cohorts is None else [tuple(c) for c in cohorts]
    (rd / "privacy").mkdir(parents=True)
    coord = generate_identity(DeterministicEntropy.from_int(999))
    holder_keys = {h: generate_identity(DeterministicEntropy.from_int(900 + h)) for h in range(1, population + 1)}
    if signed:
        (rd / "privacy" / "keys.json").write_text(json.dumps({
            "version": 1, "coordinator": coord.public_bytes.hex(),
            "holders": {str(h): k.public_bytes.hex() for h, k in holder_keys.items()}}))
    s = PrivacySession(cfg if server_caps else replace(cfg, holder_epsilon_cap=None), population=population,
                       cohort_size=len(cohort), rounds_planned=rounds, sampling=sampling,
                       ledger_dir=rd / "privacy", signer=coord if signed else None, run_id=RUN_ID)
    own = {h: Ledger(rd / "holders" / str(h) / "ledger.jsonl", signer=holder_keys[h] if signed else None)
           for h in sorted(set().union(*cohorts))}
    rng = np.random.default_rng(0)
    metrics = []
    for r, cohort in enumerate(cohorts, start=1):
        rp = s.begin_round(r, cohort=list(cohort), dim=DIM, min_survivors=max(1, len(cohort) - 1))
        e = DeterministicEntropy.from_int(r)
        total = np.zeros(rp.encoded_dim, rp.ring.dtype)
        worst = s._event(rp.plan, rp.noise_multiplier, max(1, len(rp.participants) - 1), sampled=False, dim=DIM).to_dict()
        surv = [h for h in rp.participants if not (drop_last_holder_at == r and h == rp.participants[-1])]
        surv = [] if r in abort_rounds else surv
        for h in rp.cohort:
            if h in rp.refused:
                own[h].append(_own_entry(s, rp, h, "refused", worst, None, own[h].entries, cap=own_cap))
                continue
            rl = None
            if dp_sgd_steps:   # the holder's DP-SGD accountant so far: σ = 1, q = 0.01, dp_sgd_steps per release
                done = sum(1 for x in own[h].entries if x["status"] == "released")
                rl = record_level_entry([[1.0, 0.01 * h, dp_sgd_steps * (done + 1)]], 1e-5,
                                        unit=(dp_sgd_units or {}).get(h, "sequence"))
            own[h].append(_own_entry(s, rp, h, "released", worst, None, own[h].entries, cap=own_cap,
                                     record_level=rl))  # before sending
            enc, _ = rp.encode(h, rng.normal(size=DIM).astype(np.float32) * 0.2, e)
            if h in surv:
                total = total + enc
        if surv:
            rp.decode(total, survivors=surv, entropy=e)
        entry = rp.finish(survivors=surv, clip_infos={})
        actual = s._event(rp.plan, rp.noise_multiplier, len(surv), sampled=False, dim=DIM).to_dict()
        for h in surv:  # each survivor learns the survivor count and settles at it
            own[h].append(_own_entry(s, rp, h, "settled", actual, len(surv), own[h].entries, cap=own_cap))
        metrics.append({"round": r, "clients_sampled": len(cohort), "clients_survived": len(surv), "train_loss": 5.0,
                        "eval_loss": 5.0, "eval_ppl": 148.0, "tokens_seen": 1000 * r, "bytes_up": 1, "bytes_down": 1,
                        "seconds": 1.0, "aggregation": "secagg", "epsilon": entry["epsilon"], "delta": entry["delta"]})
        if r in abort_rounds:
            metrics[-1].update(aborted="only 0 holders sent masked inputs; t_min is 3", clients_survived=0)
    conf = {"privacy": {"mode": cfg.mode, "clip": cfg.clip}, "federation": {"n_holders": population, "rounds": rounds},
            "aggregation": {"mode": "secagg"}}
    for k, v in (config or {}).items():
        conf[k] = {**conf[k], **v} if isinstance(v, dict) and isinstance(conf.get(k), dict) else v
    (rd / "config.yaml").write_text(yaml.safe_dump(conf))
    (rd / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    (rd / "checkpoints").mkdir()
    torch.save({"version": 1, "next_round": rounds + 1, "privacy": s.state_dict()}, rd / "checkpoints" / "latest.pt")
    s.close_run()                       # the signed end-of-run record, as Coordinator.finish writes it
    eps, delta = s.epsilon_spent()
    (rd / "summary.json").write_text(json.dumps({"fed_eval_ppl": 148.0, "rounds": rounds - len(abort_rounds),
                                                 "rounds_aborted": len(abort_rounds), "tokens": 1000 * rounds,
                                                 "epsilon": eps, "delta": delta, "ledger_head": s.ledger.head}))
    return s, coord, holder_keys
