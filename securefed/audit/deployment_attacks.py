"""Attacks on how a deployment configures the protocol: the coordinator's Welcome, and the files a run resumes from.

SEC-11: a holder's SecAggConfig arrives in the coordinator's Welcome (protocols/federation.md §3). The
protocol's downgrade checks (C1, SEC-10) compare each RoundStart against *that* config, so a
coordinator that announces a sparse SecAgg+ graph lowers the Shamir threshold t that protects every
holder — and, because the graph is seeded by the params hash it controls (cohort, model), it can grind
the graph so that two holders it has corrupted are exactly the target's share holders (Bell et al.
CCS 2020 assume a random graph the server cannot choose). The real Holder checks the Welcome against
its own floor (H1: ring, threshold fraction) and every RoundStart's graph degree, t and t_min against
it (H6, ``federation/holder.py:_check_floor``) before its secure-aggregation client exists.

SEC-12: checkpoints (the coordinator's ``checkpoints/latest.pt``, a holder's ``trainer.pt``) must not
unpickle: whoever can write them would run code on ``--resume`` or at the holder's restart.
"""

from __future__ import annotations

import itertools
import pickle

import numpy as np

from securefed.audit.findings import MITIGATED, VULNERABLE, Finding
from securefed.audit.harness import CTX, Round, federation
from securefed.primitives import shamir
from securefed.primitives.keys import X25519KeyPair
from securefed.primitives.prg import accumulate_masks
from securefed.secagg import SecAggConfig, SecAggServer, decode
from securefed.secagg import common as cm
from securefed.secagg.messages import KIND_B, KIND_S

__all__ = ["welcome_downgrade", "holder_takes_config_from_welcome", "checkpoint_code_execution"]

MALICIOUS_WELCOME = {"secagg": {"ring_bits": 32, "threshold_fraction": 0.5, "neighbours": 2, "chunk_elements": 1 << 20}}


def holder_takes_config_from_welcome(workdir=None) -> dict:
    """Behavioural check on the real roles: a coordinator runs SecAgg+ of degree 2 (the malicious
    welcome) with 4 holders that keep the default floor (complete graph, f = 0.5, 32 bits). Does any
    holder send keys or a masked input under the weak graph? Returns the evidence."""
    import tempfile
    from pathlib import Path

    from securefed.audit.federation_harness import one_torch_thread, tiny_federation
    from securefed.federation.holder import _check_floor
    from securefed.federation.holder_config import HolderPolicy
    from securefed.federation.stages import Stage

    floor = HolderPolicy()                                  # a holder's defaults: complete graph, f 0.5, k 32
    with tempfile.TemporaryDirectory() as tmp, one_torch_thread():
        fed = tiny_federation(Path(workdir or tmp), overrides=["aggregation.secagg.neighbours=2"],
                              policies={h: {"graph": floor.graph} for h in range(1, 5)})
        welcomed = sum(h.welcomed is not None and h.welcomed.secagg.neighbours == 2 for h in fed.holders.values())
        row = fed.coordinator.run_round(1)
        sent = {s.name: len(fed.channel.sent(stage=s, answered=True)) for s in (Stage.SECAGG_START, Stage.SECAGG_MASKED)}
    cfg = SecAggConfig(**MALICIOUS_WELCOME["secagg"])
    try:                                                    # the same check on the scenario's cohort of 10
        _check_floor(cfg, floor.secagg_floor(), 10, min_cohort=floor.min_cohort)
        floor_refuses_cohort_of_10 = False
    except ValueError:
        floor_refuses_cohort_of_10 = True
    return {"holders_that_took_the_welcome": welcomed, "round_start_answered": sent["SECAGG_START"],
            "masked_inputs_sent": sent["SECAGG_MASKED"], "round_aborted": "aborted" in row,
            "floor_refuses_degree_2_for_10_holders": floor_refuses_cohort_of_10,
            "refused_at": "SECAGG_START (H6: federation/holder.py _check_floor), before the secure-aggregation client exists"}


def welcome_downgrade(roster_size: int = 16, cohort_size: int = 10, length: int = 64) -> Finding:
    target, colluders = 1, (2, 3)
    cfg = SecAggConfig(**MALICIOUS_WELCOME["secagg"])  # what a holder that trusted the welcome would run
    fed = federation(roster_size, seed=5)
    ids, roster = fed
    rest = [i for i in ids if i not in (target, *colluders)]
    tries, cohort = 0, None
    for combo in itertools.combinations(rest, cohort_size - 3):  # grind the cohort until the graph suits us
        tries += 1
        c = sorted((target, *colluders, *combo))
        srv = SecAggServer(config=cfg, cohort=c, vector_length=length, round_index=0, session_context=CTX, roster=roster)
        if srv.graph.neighbours(target) == frozenset(colluders):
            cohort = c
            break
    real = holder_takes_config_from_welcome()
    accepted = real["round_start_answered"] > 0 or real["masked_inputs_sent"] > 0 or not real["floor_refuses_degree_2_for_10_holders"]
    ev = {"holder_config_from_welcome": accepted, "real_holders": real, "welcome_secagg": MALICIOUS_WELCOME["secagg"],
          "cohorts_tried": tries}
    default_t = SecAggConfig().thresholds(cohort_size).threshold
    if cohort is None:  # the attack could not be staged: the verdict rests on the holder's own check alone
        ev["graph_found"] = False
        return Finding("SEC-11", "Coordinator downgrades the holders' secure-aggregation parameters",
                       VULNERABLE if ev["holder_config_from_welcome"] else MITIGATED,
                       "grinding failed", ev, ("SA-08", "TR-12", "SYS-11"))
    r = Round(cohort=cohort, config=cfg, federation_=fed, length=length, seed=5).steps(3)
    held = {j: r.clients[j]._held[target][KIND_S] for j in colluders}   # what the corrupted holders hand over
    y_target = decode(r.replies[2][target]).vector                      # the target's masked input, as received
    r.steps(2)                                                           # honest unmasking: x survives
    t = r.server.start.threshold
    b_shares = {}
    for j, data in r.replies[4].items():
        for k, kind, s in decode(data).shares:
            if k == target and kind == KIND_B:
                b_shares[j] = shamir.share_from_bytes(s)
    b = shamir.reconstruct(b_shares, threshold=t)
    s_key = X25519KeyPair.from_private_bytes(shamir.reconstruct(held, threshold=t))
    sid, rnd = r.server.sid, r.server.start.round_index
    keys = [(cm.self_mask_key(b, sid=sid, round_index=rnd, i=target), -1)]
    for j in sorted(r.server.graph.neighbours(target)):
        k = cm.pairwise_key(s_key.shared(r.server.adverts[j].s_public), sid=sid, round_index=rnd, i=target, j=j)
        keys.append((k, -cm.sigma(target, j)))
    x = np.array(y_target, copy=True)
    accumulate_masks(x, keys, r.server.ring, chunk_elements=cfg.chunk_elements)
    recovered = bool(np.array_equal(x, r.inputs[target]))
    ev.update({"graph_found": True, "cohort": cohort, "threshold_t_after_downgrade": t,
               "threshold_t_holder_default": default_t, "colluding_holders_used": len(colluders),
               "colluders_needed_by_default": default_t,
               "target_input_recovered_exactly": recovered, "vector_words": length})
    vulnerable = recovered and ev["holder_config_from_welcome"]
    return Finding(
        "SEC-11", "Coordinator downgrades the holders' secure-aggregation parameters (welcome message)",
        VULNERABLE if vulnerable else MITIGATED,
        ("A holder takes ring bits, threshold fraction and the SecAgg+ degree from the coordinator's welcome "
         "with no floor of its own, so C1 checks the RoundStart against the attacker's numbers. "
         if vulnerable else
         f"The real roles ran a round whose welcome announced neighbours=2: {real['holders_that_took_the_welcome']} "
         "holders joined (the welcome fits their ring and threshold floors, H1), and every one refused the "
         "RoundStart of degree 2 against its own floor (H6, federation/holder.py _check_floor) — "
         f"{real['round_start_answered']} keys and {real['masked_inputs_sent']} masked inputs sent. Had a holder "
         "accepted it: ")
        + f"announcing neighbours=2 cuts t from {default_t} to {t}; grinding the cohort ({tries} tries) put "
        f"the 2 corrupted holders on the target's share set, and coordinator + 2 holders recovered the target's "
        f"input exactly ({recovered}). The holders' default needs {default_t} colluders.",
        ev, ("SA-08", "SA-09", "TR-12", "SYS-11"),
        fix=("federation/holder.py: every holder checks the Welcome (H1) and every RoundStart (H6) against its own "
             "HolderPolicy floor (min ring bits, min threshold fraction, graph complete/auto/degree, min cohort). "
             "Still open: the SecAgg+ graph is seeded from the params hash the coordinator controls; seed it from "
             "holder-contributed randomness (commit-reveal) or a public beacon."))


class _Payload:
    """Unpickling this runs Path.write_text(marker, ...): a stand-in for any code an attacker wants run."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.write_text, (Path(self.marker), "code ran inside --resume"))


def checkpoint_code_execution() -> Finding:
    """Plant a pickled code payload where the coordinator's --resume and a holder's restart read their state."""
    import json
    import tempfile
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    import securefed
    from securefed.federation.coordinator import Coordinator, StateError
    from securefed.federation.holder import Holder, HolderStateError

    root = Path(securefed.__file__).parent
    sites = [f"{p.relative_to(root.parent)}:{n}" for p in sorted(root.rglob("*.py")) if "audit" not in p.parts
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if ("torch.load(" in line and "weights_only=True" not in line) or "pickle.load" in line]
    refused, executed = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        marker = Path(tmp) / "executed"
        # the coordinator: RUN_DIR/checkpoints/latest.pt, read first thing by Coordinator._restore (--resume)
        ck = Path(tmp) / "latest.pt"
        torch.save({"version": 3, "next_round": _Payload(marker)}, ck)
        coord = SimpleNamespace(rd=SimpleNamespace(checkpoint_file=ck), dim=1,
                                cfg=SimpleNamespace(model=SimpleNamespace(preset="tiny")))
        # the holder: state_dir/trainer.pt, read by Holder._load_state when a restarted holder joins again
        state = Path(tmp) / "holder"
        state.mkdir()
        run_id = bytes(16)
        (state / "holder_state.json").write_text(json.dumps({"version": 1, "run_id": run_id.hex(), "next_round": 2}))
        torch.save({"step": _Payload(marker)}, state / "trainer.pt")
        # Holder._read_trainer_file: the one reader of trainer.pt (Holder.check_state and _load_state call it)
        holder = SimpleNamespace(_trainer_file=state / "trainer.pt")
        for who, load in (("coordinator --resume", lambda: Coordinator._restore(coord)),
                          ("holder restart", lambda: Holder._read_trainer_file(holder))):
            refused[who] = None
            try:
                load()      # the real code paths; only the safe loader's refusal is expected
            except pickle.UnpicklingError as e:
                refused[who] = type(e).__name__
            except (HolderStateError, StateError) as e:   # each names the unreadable file (federation.md §6)
                refused[who] = f"{type(e).__name__} (from {type(e.__context__).__name__})" if e.__context__ else type(e).__name__
            executed[who] = marker.exists()
            marker.unlink(missing_ok=True)
    # mitigated only if both paths refused the payload AND no pickle-capable load is left anywhere
    verdict = VULNERABLE if any(executed.values()) or None in refused.values() or sites else MITIGATED
    ev = {"unsafe_load_sites": sites, "payload_executed": executed, "refused_with": refused,
          "payload_executed_on_resume": executed["coordinator --resume"]}
    return Finding(
        "SEC-12", "Tampered checkpoint runs code at resume (pickle)", verdict,
        ("Checkpoints are loaded with full pickle before any check: whoever can write RUN_DIR/checkpoints/latest.pt "
         "or a holder's trainer.pt runs arbitrary code on --resume or at the holder's restart." if verdict == VULNERABLE
         else "A pickled code payload was planted in the coordinator's checkpoint and in a holder's trainer.pt and "
         "read through the real Coordinator._restore (`--resume`) and Holder._read_trainer_file (a restarted holder's "
         "check): the loader (torch.load weights_only=True) refused both and no code ran "
         f"(unsafe load sites left in securefed/: {len(sites)})."), ev, ("PV-08", "TR-10", "SYS-13"),
        fix=("federation/coordinator.py:_restore and federation/holder.py:_load_state: torch.load(..., "
             "weights_only=True); holder state as JSON. Optionally authenticate the checkpoint (HMAC with a key "
             "outside RUN_DIR)."))
