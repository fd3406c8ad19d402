"""Order-by-order: Opacus compute_rdp (securefed) vs dp-accounting vs an mpmath integral of A_α (arbiter)."""
import sys, warnings
warnings.simplefilter("ignore")
import numpy as np, mpmath as mp
from securefed.privacy import rdp as R
from dp_accounting.rdp.rdp_privacy_accountant import _compute_rdp_poisson_subsampled_gaussian as dpa_rdp

mp.mp.dps = 60
def exact(q, s, a):
    # RDP of the sampled Gaussian (Mironov et al. 2019): log E_{z~N(0,σ²)}[(1−q + q e^{(2z−1)/(2σ²)})^α]/(α−1)
    q, s, a = mp.mpf(q), mp.mpf(s), mp.mpf(a)
    f = lambda z: mp.npdf(z, 0, s) * (1 - q + q * mp.e ** ((2 * z - 1) / (2 * s * s))) ** a
    c = a / (2) # integrand peaks near z ≈ α (scale 1): integrate around
    v = mp.quad(f, [-mp.inf, -10 * s, 0, 0.5, a * 0.5, a, a + 10 * s + 10, mp.inf])
    return float(mp.log(v) / (a - 1))

worst = []
for q in [0.01, 0.05, 0.2, 0.5]:
    for s in [0.3, 0.6, 1.0, 2.0]:
        orders = list(R.ORDERS)
        ours = R.poisson_gaussian_rdp(q, s)
        ref = np.asarray(dpa_rdp(q, s, orders))
        d = (ref - ours) / ref
        i = int(np.argmax(d))
        worst.append((d[i], q, s, orders[i], ours[i], ref[i]))
worst.sort(reverse=True)
for w in worst[:10]:
    d, q, s, a, o, r = w
    ex = exact(q, s, a) if a < 40 else float('nan')
    print(f"dpa-ours rel {d:.3e} q={q} σ={s} α={a}: opacus {o:.10g} dp-acc {r:.10g} mpmath {ex:.10g}")
