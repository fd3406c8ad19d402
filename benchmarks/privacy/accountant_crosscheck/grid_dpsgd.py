"""Grid 3: record-level DP-SGD ε as securefed states it (holder_ledger.record_level_entry: Opacus RDPAccountant,
its default orders) vs dp-accounting PLD (Poisson add/remove, both directions), incl. histories whose σ/q change."""
import os
import itertools, json, sys, time, warnings
warnings.simplefilter("ignore")
import logging; logging.disable(logging.WARNING)
from dp_accounting.pld import privacy_loss_distribution as PLDm
from securefed.privacy.holder_ledger import record_level_entry

def pld_hist(hist, deltas, pessimistic):
    tot = None
    for z, q, n in hist:
        p = PLDm.from_gaussian_mechanism(standard_deviation=z, pessimistic_estimate=pessimistic,
                                         value_discretization_interval=1e-4 if sum(x[2] for x in hist) <= 1000 else 3e-4,
                                         sampling_prob=q, use_connect_dots=pessimistic).self_compose(n)
        tot = p if tot is None else tot.compose(p)
    return [tot.get_epsilon_for_delta(d) for d in deltas]

DELTAS = [1e-5, 1e-8]
hists = [[[z, q, n]] for q, z, n in itertools.product([0.001, 0.01, 0.1, 0.5], [0.5, 0.8, 1.0, 2.0, 4.0], [10, 100, 1000, 10000])]
hists += [[[1.0, 0.01, 500], [2.0, 0.01, 500]], [[0.8, 0.05, 100], [0.8, 0.02, 900]], [[4.0, 0.5, 50], [0.6, 0.001, 5000]]]
out = open(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "raw", "grid_dpsgd.jsonl"), "w")
t0 = time.time()
for h in hists:
    if h[0][1] == 0.5 and h[0][2] == 10000 and h[0][0] < 1:  # ε in the thousands: skip (PLD support huge)
        continue
    pess, opt = pld_hist(h, DELTAS, True), pld_hist(h, DELTAS, False)
    for i, d in enumerate(DELTAS):
        sf = record_level_entry(h, d)["epsilon"]
        out.write(json.dumps(dict(history=h, delta=d, sf=sf, pld_pess=pess[i], pld_opt=opt[i])) + "\n"); out.flush()
    print(h, round(time.time() - t0), flush=True)
