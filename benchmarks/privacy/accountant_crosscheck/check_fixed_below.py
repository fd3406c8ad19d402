"""Where securefed's fixed-size ε is below dp-accounting's Thm. 27 value: is dp-accounting above even the
no-sampling Gaussian bound (which securefed's min() uses and which is valid for any q)?"""
import os
import json, math, warnings
warnings.simplefilter("ignore")
import numpy as np
from securefed.privacy import rdp as R
rows = [json.loads(l) for l in open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "raw", "grid_fixed.jsonl"))]
ints = np.array([a for a in R.ORDERS if a == int(a)])
n = ok = 0
for r in rows:
    if r["sf"] >= r["dpa_rdp"] * (1 - 1e-9):
        continue
    n += 1
    unsampled = R.eps_from_rdp(r["T"] * ints * 4 / (2 * r["sigma"] ** 2), r["delta"], orders=ints)[0]  # replace-one: 2C
    ok += (r["sf"] <= unsampled * (1 + 1e-12)) and (r["dpa_rdp"] > unsampled) and (r["sf"] >= r["lower"])
    if not ((r["dpa_rdp"] > unsampled)):
        print("unexplained", r, unsampled)
print(f"{n} points where securefed < dp-accounting Thm. 27; at {ok} of them dp-accounting exceeds the unsampled "
      f"Gaussian bound (so it is dp-accounting that is loose) and securefed ≥ the PLD lower bound; q values:",
      sorted({r['q'] for r in rows if r['sf'] < r['dpa_rdp'] * (1 - 1e-9)}))
