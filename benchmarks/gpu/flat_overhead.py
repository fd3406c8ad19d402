"""Per-round flat-vector overhead of a holder: today's path vs a device-side Δ (the proposed change).

    python benchmarks/gpu/flat_overhead.py --presets 125m,1.3b --out flat.json

today:    set_flat(model, θ_cpu)  (one pageable H2D copy per tensor)
          Δ = θ_cpu − get_flat(model)  (one pageable D2H copy per tensor, a CPU cat, a CPU subtraction)
proposed: θ_dev = θ_cpu → GPU once; per-tensor device copies; Δ = (θ_dev − cat(params)) on the GPU;
          one D2H copy into a pinned buffer reused across rounds, then a CPU clone (the caller keeps Δ).
Both give the same Δ (checked, max |diff| reported). No training: weights are perturbed in place.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from securefed.training.flat import get_flat, set_flat
from securefed.training.models import build_model


def today(model, theta):
    set_flat(model, theta)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-3)
    return theta - get_flat(model)


def proposed(model, theta, pinned):
    theta_dev = theta.to("cuda", non_blocking=True)
    with torch.no_grad():
        off = 0
        for p in model.parameters():
            n = p.numel()
            p.copy_(theta_dev[off : off + n].view_as(p))
            off += n
        for p in model.parameters():
            p.add_(1e-3)
        d = theta_dev - torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    pinned.copy_(d, non_blocking=True)
    torch.cuda.synchronize()
    return pinned.clone()


def timed(fn, *a):
    torch.cuda.synchronize()
    t = time.perf_counter()
    out = fn(*a)
    torch.cuda.synchronize()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="125m,1.3b")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    res = []
    for preset in args.presets.split(","):
        with torch.device("cuda"):
            model = build_model(preset, vocab_size=32768, seq_len=2048, seed=0)
        theta = get_flat(model)
        pinned = torch.empty_like(theta).pin_memory()
        today(model, theta)  # warm
        proposed(model, theta, pinned)
        a, ta = timed(today, model, theta)
        b, tb = timed(proposed, model, theta, pinned)
        a2, ta2 = timed(today, model, theta)
        b2, tb2 = timed(proposed, model, theta, pinned)
        r = {"preset": preset, "params": theta.numel(), "today_s": min(ta, ta2), "proposed_s": min(tb, tb2),
             "max_abs_diff": float((a - b).abs().max())}
        res.append(r)
        print(json.dumps(r), flush=True)
        del model, theta, pinned, a, b, a2, b2
        torch.cuda.empty_cache()
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
