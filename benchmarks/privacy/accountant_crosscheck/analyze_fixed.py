import os
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "raw", "grid_fixed.jsonl"))]
def rel(a, b):
    if math.isinf(b): return 0.0 if math.isinf(a) else -math.inf
    return (a - b) / b if b else (0.0 if a == b else math.inf)
print(len(rows), "points")
for ref in ("dpa_rdp", "lower"):
    g = sorted(((rel(r["sf"], r[ref]), r) for r in rows), key=lambda t: t[0])
    below = [t for t in g if t[0] < -1e-9]
    print(f"sf - {ref}: min rel {g[0][0]:.3e} at {g[0][1]}; below(-1e-9): {len(below)}")
    for x, r in below[:6]:
        print("   ", f"{x:.3e}", r)
print("max per-order (Thm27 − ours)/Thm27 over curves:", max(r["curve_ref_minus_sf_rel"] for r in rows))
