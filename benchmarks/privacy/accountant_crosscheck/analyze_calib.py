import os
import json
rows = [json.loads(l) for l in open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "raw", "grid_calib.jsonl"))]
bad = [r for r in rows if r["sf_eps"] > r["target"] or (r["pld_eps"] is not None and r["pld_eps"] > r["target"])]
slack = max((r["target"] - r["sf_eps"]) / r["target"] for r in rows)
print(len(rows), "calibrations;", len(bad), "with achieved ε > target; max relative slack below target", f"{slack:.2e}")
for r in bad: print(r)
