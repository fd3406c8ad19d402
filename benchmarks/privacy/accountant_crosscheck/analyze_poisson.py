import os
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(os.path.abspath(__file__)), "raw", "grid_poisson.jsonl"))]
def rel(a, b):
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)): return None
    if math.isinf(b): return 0.0 if math.isinf(a) else -math.inf
    return (a - b) / b if b else (0.0 if a == b else (math.inf if a > b else -math.inf))
print(len(rows), "points")
for key, ref in [("sf_rdp", "dpa_rdp"), ("sf_rdp", "pld_pess"), ("sf_rdp", "pld_opt"), ("sf_prv", "pld_pess"), ("sf_prv", "pld_opt")]:
    g = [(rel(r[key], r[ref]), r) for r in rows]
    errs = [r for x, r in g if x is None]
    g = [(x, r) for x, r in g if x is not None]
    g.sort(key=lambda t: t[0])
    below = [t for t in g if t[0] < -1e-9]
    print(f"{key} - {ref}: n={len(g)} min rel {g[0][0]:.3e} at {({k: g[0][1][k] for k in ('q','sigma','T','delta',key,ref)})}; below(-1e-9): {len(below)}; errors {len(errs)}")
    for x, r in below[:8]:
        print(f"   {x:.3e}", {k: r[k] for k in ('q', 'sigma', 'T', 'delta', key, ref)})
