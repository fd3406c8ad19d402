"""The general amplification bounds securefed uses for discrete mechanisms, applied to the Gaussian where the exact
answer is known: Zhu–Wang Thm. 6 (Poisson) must be ≥ the exact sampled-Gaussian RDP (Opacus, checked vs mpmath)
at every integer order; WBK Thm. 9 (fixed) must be ≥ dp-accounting's Thm. 27 (already in grid_fixed)."""
import itertools, warnings
warnings.simplefilter("ignore")
import numpy as np
from securefed.privacy import rdp as R

worst = (np.inf, None)
n = 0
ints = np.array([a for a in R.ORDERS if a == int(a)])
idx = [R.ORDERS.index(a) for a in ints]
for q, s in itertools.product([0.001, 0.01, 0.05, 0.2, 0.5, 0.9], [0.3, 0.5, 0.8, 1.0, 2.0, 5.0, 20.0]):
    exact = R.poisson_gaussian_rdp(q, s)[idx]
    gen = R.poisson_subsampled_rdp(lambda a: a / (2 * s * s), q)[idx]
    fin = np.isfinite(exact) & (exact > 0)
    r = (gen[fin] - exact[fin]) / exact[fin]
    n += fin.sum()
    i = int(np.argmin(r))
    if r[i] < worst[0]:
        worst = (r[i], (q, s, ints[fin][i], gen[fin][i], exact[fin][i]))
print(f"{n} (q, σ, α) points; min (ZW Thm.6 − exact)/exact = {worst[0]:.3e} at q, σ, α, general, exact = {worst[1]}")
