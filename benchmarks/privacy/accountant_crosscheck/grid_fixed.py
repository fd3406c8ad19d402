"""Grid 2: Gaussian + fixed-size cohorts (sampling without replacement, replace-one, sensitivity 2C).
securefed ε vs dp-accounting RDP (WBK Thm. 27, REPLACE_ONE, σ/2) and vs a PLD lower bound on the true ε."""
import os
import itertools, json, sys, time, warnings
warnings.simplefilter("ignore")
import numpy as np
import dp_accounting as dpa
from common import rdp_eps, RO
from lowerbound import pair_pld, lower_eps, wor_pm_pair
from securefed.privacy import rdp as R
from securefed.privacy.accountant import Accountant, RoundEvent, event_rdp
from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_sample_wor_gaussian

N = 1000
MS = [10, 50, 200, 500, 900, 1000]
SIGMAS = [0.3, 0.6, 1.0, 2.0, 5.0]
TS = [1, 10, 100, 1000]
DELTAS = [1e-3, 1e-5, 1e-8]
out = open(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "raw", "grid_fixed.jsonl"), "w")
ints = [a for a in R.ORDERS if a == int(a)]
t0 = time.time()
for m, s in itertools.product(MS, SIGMAS):
    q = m / N
    # order-by-order: securefed's one-round curve vs dp-accounting's Thm. 27 at the integer orders
    sf_curve = event_rdp(RoundEvent("gaussian", "fixed", q, s))
    if q < 1:
        ref_curve = np.asarray(_compute_rdp_sample_wor_gaussian(q, s / 2, ints))
    else:
        ref_curve = np.asarray(ints) * 4 / (2 * s * s)
    sf_int = np.asarray([sf_curve[R.ORDERS.index(a)] for a in ints])
    fin = np.isfinite(ref_curve) & np.isfinite(sf_int)
    worst_curve = float(np.max((ref_curve[fin] - sf_int[fin]) / ref_curve[fin])) if fin.any() else 0.0
    plds = {iv: pair_pld(*wor_pm_pair(q, s), s, interval=iv, ncell=400_000) for iv in (1e-3, 1e-4)}
    for T in TS:
        ev = dpa.SampledWithoutReplacementDpEvent(N, m, dpa.GaussianDpEvent(s / 2)) if m < N else dpa.GaussianDpEvent(s / 2)
        ref = rdp_eps(ev, T, DELTAS, R.ORDERS, RO)
        lb = lower_eps(plds[1e-3 if T <= 10 else 1e-4], T, DELTAS)
        for i, d in enumerate(DELTAS):
            sf = Accountant("rdp").epsilon(d, [RoundEvent("gaussian", "fixed", q, s)] * T)
            out.write(json.dumps(dict(q=q, sigma=s, T=T, delta=d, sf=sf, dpa_rdp=ref[i], lower=lb[i],
                                      curve_ref_minus_sf_rel=worst_curve)) + "\n"); out.flush()
        print(m, s, T, round(time.time() - t0), flush=True)
