"""Grid 1: Gaussian + Poisson (add/remove). securefed RDP and PRV vs dp-accounting PLD (pess/opt) and RDP."""
import itertools, json, math, sys, time, warnings
warnings.simplefilter("ignore")
import dp_accounting as dpa
from common import pld_gauss_eps, rdp_eps, rel
from securefed.privacy import rdp as R
from securefed.privacy.accountant import Accountant, RoundEvent

QS = [0.01, 0.05, 0.2, 0.5, 1.0]
SIGMAS = [0.3, 0.6, 1.0, 2.0, 5.0]
TS = [1, 10, 100, 1000]
DELTAS = [1e-3, 1e-5, 1e-8]
path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "raw", "grid_poisson.jsonl")
import os
done = {(r["q"], r["sigma"], r["T"]) for r in map(json.loads, open(path))} if os.path.exists(path) else set()
out = open(path, "a")  # resumable: a run killed for memory (q = 0.5, σ = 0.3, T = 1000 at 1e-4) goes on
t0 = time.time()
for q, s, T in itertools.product(QS, SIGMAS, TS):
    if (q, s, T) in done:
        continue
    # huge ε (σ = 0.3 over many rounds): a coarser PLD grid (still pessimistic / optimistic bounds), else OOM
    iv = 1e-2 if (s <= 0.3 and (T >= 1000 or (T >= 100 and q >= 0.5))) else 1e-4
    ev = dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(s)) if q < 1 else dpa.GaussianDpEvent(s)
    samp = "poisson" if q < 1 else "none"
    evs = [RoundEvent("gaussian", samp, q, s)] * T
    pess = pld_gauss_eps(q, s, T, DELTAS, True, interval=iv)
    opt = pld_gauss_eps(q, s, T, DELTAS, False, interval=iv)
    drdp = rdp_eps(ev, T, DELTAS, R.ORDERS)
    for i, d in enumerate(DELTAS):
        sf = Accountant("rdp").epsilon(d, evs)
        try:
            if q >= 1 and s <= 0.3 and T >= 1000:  # ε in the thousands: Opacus' PRV domain exhausts memory (OOM)
                raise MemoryError("skipped: PRV domain too large")
            prv = Accountant("prv").epsilon(d, evs)
        except Exception as e:  # noqa
            prv = repr(e)
        row = dict(interval=iv, q=q, sigma=s, T=T, delta=d, sf_rdp=sf, sf_prv=prv, dpa_rdp=drdp[i], pld_pess=pess[i], pld_opt=opt[i])
        out.write(json.dumps(row) + "\n"); out.flush()
    print(q, s, T, round(time.time() - t0), flush=True)
