"""Central mode + adaptive clipping, before the fix: the server's data noise var depended on the realised
participant count n (σ_b = max(n/20, z)). Rényi divergence between the neighbouring releases (holder h out:
n participants; in: n + 1), others' updates fixed, P coordinates:
  D_α(N(μ, v2 I) || N(0, v1 I)) = α‖μ‖²/(2 v_α) + P/(2(1−α))·[ln(α v1 + (1−α) v2)... ]   (closed form, both orders)
and the same pair's divergence as accounted (a Gaussian of the accounted multiplier: α/(2 z_acc²))."""
import math
import numpy as np
from securefed.privacy.clipping import bit_noise_std, data_noise_multiplier

def renyi_gauss(alpha, mu2, v1, v2, P):
    # D_α(N(μ1, v1 I_P) || N(μ2, v2 I_P)) with ‖μ1 − μ2‖² = mu2 (Gil et al. 2013)
    va = alpha * v2 + (1 - alpha) * v1
    if va <= 0:
        return math.inf
    return alpha * mu2 / (2 * va) - P / (2 * (alpha - 1)) * (math.log(va) - (1 - alpha) * math.log(v1) - alpha * math.log(v2))

z, N = 1.0, 1000
for n in (100, 400):
    v = {k: data_noise_multiplier(z, bit_noise_std(k, z)) ** 2 for k in (n, n + 1)}
    sb_N = bit_noise_std(N, z)
    z_acc = ((data_noise_multiplier(z, sb_N)) ** -2 + (2 * sb_N) ** -2) ** -0.5
    for P in (1_377_408, 10**8):
        for a in (2.0, 8.0, 32.0):
            d1 = renyi_gauss(a, 1.0, v[n + 1], v[n], P)   # h in (mean shift C=1, var v_{n+1}) vs h out
            d2 = renyi_gauss(a, 1.0, v[n], v[n + 1], P)
            print(f"n={n}->{n+1} P={P:.3g} α={a:g}: true D_α ≥ {max(d1, d2):.4g} vs accounted α/(2z²) = {a / (2 * z_acc**2):.4g}"
                  f"  (Δv/v = {(v[n] - v[n+1]) / v[n]:.3g})")
