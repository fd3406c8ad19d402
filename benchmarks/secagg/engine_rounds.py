"""Three secure rounds of the 125m model × 3 holders through the one engine on a chosen backend, printing each
round's stage_seconds and aggregate_seconds (RESULTS.md (r13)). Holders train K = 1 step of 1 × 32 tokens, so
that the P-sized work of the round (88M coordinates with the demo tokenizer's vocabulary) stands out.

    .venv/bin/python benchmarks/secagg/engine_rounds.py inproc|grpc|ray OUT_DIR
"""

from __future__ import annotations

import json
import shutil
import sys

from securefed.federation.simulation import Simulation
from securefed.runtime.config import load_run_config

OVERRIDES = ["model.preset=125m", "federation.n_holders=3", "train.local_steps=1", "train.batch_size=1",
             "data.seq_len=32", "aggregation.mode=secagg", "federation.rounds=100", "federation.eval_every=100",
             "baseline=false"]


def main() -> None:
    backend, out = sys.argv[1], sys.argv[2]
    cfg = load_run_config(preset="demo", overrides=OVERRIDES)
    shutil.rmtree(out, ignore_errors=True)
    Simulation(cfg, out, progress=False, backend=backend, stop_after_round=3).run()
    for line in open(f"{out}/metrics.jsonl"):
        r = json.loads(line)
        print(r["round"], round(r["seconds"], 2), r["stage_seconds"], r.get("aggregate_seconds"))


if __name__ == "__main__":
    main()
