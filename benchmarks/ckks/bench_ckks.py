"""CKKS vs pairwise masking on the same small tensors: bytes and time per parameter, and error.

Usage (from the repository root, venv active):
    python benchmarks/ckks/bench_ckks.py --out benchmarks/ckks          # full run, writes results.*
    python benchmarks/ckks/bench_ckks.py --quick                        # smoke run, prints only
For the lead's end-to-end study, call :func:`ckks_round_overhead` with the model's layout.

Masking side: the floor of pairwise masking on the same values, built from the secure-aggregation
helpers' PRG (securefed.primitives.prg.accumulate_masks, AES-256-CTR into uint32): per holder
quantize + (n - 1) pairwise + 1 self mask stream written in place; server adds n uploads and
removes n self masks. It excludes key agreement and Shamir shares (small, fixed per round), so it
flatters masking slightly; CKKS numbers include everything in run_ckks_round except key rotation,
which is reported separately.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from securefed.ckks import CkksServer, RoutingPolicy, plan_routes, run_ckks_round, setup_keyring
from securefed.ckks import keys
from securefed.ckks.messages import decode, encode
from securefed.primitives.prg import accumulate_masks
from securefed.primitives.quantize import RingSpec
from securefed.primitives.rng import DeterministicEntropy

RING = RingSpec(32)


def _entropy():
    counter = iter(range(1, 1 << 62))
    return lambda h: DeterministicEntropy.from_int(1_000_003 * next(counter) + h)


def model_small_tensors(preset: str) -> list[tuple[str, tuple[int, ...]]]:
    """(name, shape) of every parameter of a securefed Llama-style preset (norms are the small ones)."""
    from securefed.training.flat import param_layout
    from securefed.training.models import build_model

    return param_layout(build_model(preset, vocab_size=4096, seq_len=128, seed=0))


def masking_floor(xs: dict[int, np.ndarray], reps: int) -> dict:
    """Quantize + mask per holder, sum + unmask at the server, with the secagg PRG (see module doc)."""
    n, length = len(xs), next(iter(xs.values())).size
    keys_ = {(i, j): bytes([i % 256, j % 256]) * 16 for i in xs for j in xs}
    scale = 2.0**31 / (n * max(1.0, max(float(np.abs(v).max()) for v in xs.values())))
    t_mask, t_server = [], []
    for _ in range(reps):
        t0 = time.perf_counter()
        ups = {}
        for i, x in xs.items():
            q = np.rint(x * scale).astype(np.int64).astype(np.uint32)
            signs = [(keys_[(i, i)], 1)] + [(keys_[(min(i, j), max(i, j))], 1 if i < j else -1) for j in xs if j != i]
            ups[i] = accumulate_masks(q, signs, RING, chunk_elements=1 << 16)
        t1 = time.perf_counter()
        acc = np.zeros(length, dtype=np.uint32)
        for u in ups.values():
            np.add(acc, u, out=acc)
        accumulate_masks(acc, [(keys_[(i, i)], -1) for i in xs], RING, chunk_elements=1 << 16)
        total = acc.view(np.int32).astype(np.float64) / scale
        t2 = time.perf_counter()
        t_mask.append((t1 - t0) / n)
        t_server.append(t2 - t1)
    err = float(np.max(np.abs(total - sum(xs.values()))))
    return {"mask_s_per_holder": min(t_mask), "server_s": min(t_server),
            "bytes_up_per_holder": length * 4, "max_abs_error": err}


def ckks_costs(xs: dict[int, np.ndarray], policy: RoutingPolicy, reps: int) -> dict:
    """Encrypt (per holder), validate+add (server, per upload) and decrypt (decryptor) separately."""
    ent = _entropy()
    n, length = len(xs), next(iter(xs.values())).size
    pol = dataclasses.replace(policy, rotate_key_every_rounds=1 << 30)
    kr = setup_keyring(xs, policy=pol, entropy_for=ent)
    server = CkksServer(pol, kr.roster)
    t0 = time.perf_counter()
    first = run_ckks_round(xs, policy=pol, round_index=0, keyring=kr, entropy_for=ent, server=server)
    t_round0 = time.perf_counter() - t0
    t_enc, t_add, t_dec, t_round, errs = [], [], [], [], []
    for r in range(1, reps + 1):
        server.begin_round(r, frozenset(xs), length)
        t0 = time.perf_counter()
        wires = {h: encode(kr.holder(h).encrypt(r, x, cohort_size=n)) for h, x in xs.items()}
        t1 = time.perf_counter()
        for h, w in wires.items():
            server.receive_upload(h, w)
        agg = server.aggregate()
        t2 = time.perf_counter()
        d = min(xs)
        total = kr.holder(d).decrypt(decode(agg), length=length, cohort=frozenset(xs), roster=kr.roster, entropy=ent(d))
        t3 = time.perf_counter()
        out = run_ckks_round(xs, policy=pol, round_index=10_000 + r, keyring=kr, entropy_for=ent, server=server)
        t_round.append(time.perf_counter() - t3)
        t_enc.append((t1 - t0) / n)
        t_add.append((t2 - t1) / n)
        t_dec.append(t3 - t2)
        errs += [float(np.max(np.abs(total - sum(xs.values())))), float(np.max(np.abs(out.total - sum(xs.values()))))]
    up = len(next(iter(wires.values())))
    return {
        "encrypt_s_per_holder": min(t_enc),
        "validate_add_s_per_upload": min(t_add),
        "decrypt_s": min(t_dec),
        "round_s": min(t_round),
        "first_round_s_with_key_distribution": t_round0,
        "bytes_up_per_holder": up,
        "bytes_per_param": up / length,
        "key_distribution_bytes": first.bytes_up + first.bytes_down - (out.bytes_up + out.bytes_down),
        "round_bytes_up": out.bytes_up,
        "round_bytes_down": out.bytes_down,
        "max_abs_error": max(errs),
        "documented_bound": policy.error_bound(n, max(float(np.abs(v).max()) for v in xs.values())),
        "n_ciphertexts": -(-length // policy.slots),
    }


def ckks_round_overhead(named_shapes, n_holders: int, policy: RoutingPolicy | None = None, reps: int = 3,
                        clip: float = 1.0, seed: int = 0) -> dict:
    """For the lead: CKKS vs masking on the small tensors that ``policy`` routes to CKKS.

    Returns both sides' per-round seconds and bytes on the same values (uniform in [-clip, clip]).
    """
    policy = policy or RoutingPolicy(enabled=True)
    plan = plan_routes(list(named_shapes), policy)
    if plan.ckks_size == 0:
        raise ValueError("policy routes no tensor to CKKS")
    rng = np.random.default_rng(seed)
    xs = {h: rng.uniform(-clip, clip, plan.ckks_size) for h in range(n_holders)}
    ck, mk = ckks_costs(xs, policy, reps), masking_floor(xs, reps)
    return {"ckks_params": plan.ckks_size, "secagg_params": plan.secagg_size, "n_holders": n_holders,
            "n_ciphertexts": plan.n_ciphertexts, "ckks": ck, "masking_floor": mk}


def run(quick: bool) -> dict:
    results: dict = {
        "host": {"python": sys.version.split()[0], "machine": platform.machine(), "cpus": os.cpu_count(),
                 "loadavg": " ".join(f"{x:.1f}" for x in os.getloadavg())},
        "policy": dataclasses.asdict(RoutingPolicy(enabled=True)),
        "context_bytes": {},
        "sets": [],
    }
    ctx = keys.generate_secret_context(RoutingPolicy(enabled=True))
    results["context_bytes"] = {"public": len(keys.public_context_bytes(ctx)), "secret": len(keys.secret_context_bytes(ctx))}
    presets = ["tiny"] if quick else ["tiny", "125m"]
    ns = [4] if quick else [4, 10, 32]
    for preset in presets:
        shapes = model_small_tensors(preset)
        for n in ns:
            r = ckks_round_overhead(shapes, n, reps=1 if quick else 5)
            r["model"] = preset
            results["sets"].append(r)
            print(f"{preset} n={n}: {json.dumps(r)}", flush=True)
    for N in ([] if quick else [16384]):
        pol = RoutingPolicy(enabled=True, poly_modulus_degree=N)
        r = ckks_round_overhead(model_small_tensors("125m"), 10, policy=pol, reps=5)
        r["model"], r["poly_modulus_degree"] = "125m", N
        results["sets"].append(r)
        print(f"125m N={N} n=10: {json.dumps(r)}", flush=True)
    return results


def render(results: dict) -> str:
    """results.md: the committed write-up, regenerated from results.json by every full run."""
    rows, errs = [], []
    for s in results["sets"]:
        c, m, p = s["ckks"], s["masking_floor"], s["ckks_params"]
        n_poly = s.get("poly_modulus_degree", 8192)
        rows.append(
            f"| {s['model']} | {n_poly} | {s['n_holders']} | {p} | {s['n_ciphertexts']} "
            f"| {c['bytes_per_param']:.1f} | {m['bytes_up_per_holder'] / p:.1f} "
            f"| {1e6 * c['encrypt_s_per_holder'] / p:.2f} | {1e6 * m['mask_s_per_holder'] / p:.3f} "
            f"| {1e6 * c['validate_add_s_per_upload'] / p:.2f} | {1e6 * c['decrypt_s'] / p:.2f} "
            f"| {1e6 * m['server_s'] / p:.3f} | {c['round_s']:.2f} | {c['key_distribution_bytes'] / 1e6:.1f} |")
        errs.append(f"| {s['model']} | {n_poly} | {s['n_holders']} | {c['max_abs_error']:.2e} "
                    f"| {c['documented_bound']:.2e} | {m['max_abs_error']:.2e} |")
    host = results["host"]
    return TEMPLATE.format(rows="\n".join(rows), errs="\n".join(errs), python=host["python"],
                           load=host.get("loadavg", "n/a"), pub=results["context_bytes"]["public"] / 1e3,
                           sec=results["context_bytes"]["secret"] / 1e3)


TEMPLATE = """# CKKS vs pairwise masking on the small tensors

Command (repository root, venv active; 2-4 min on 2 cores):

    python benchmarks/ckks/bench_ckks.py --out benchmarks/ckks     # writes results.json and this file

Hardware: 2-core Intel Xeon VM, no GPU, Python {python}, TenSEAL 0.3.18. Load average at the start
of the run: {load} (other jobs shared the two cores), so times are indicative only; bytes and
errors are exact. Policy: the defaults of `RoutingPolicy(enabled=True)`: N = 8192 (4096 slots),
coeff_mod_bit_sizes (60, 60, 60), scale 2^80, noise flooding sigma = 2^-40, verified aggregate (the
decryptor re-sums the survivors' signed uploads), unless N says 16384. Tensor sets: every tensor
with <= 4096 elements of securefed's Llama presets = the RMSNorm gains (a Llama model has no
biases): `tiny` (d = 128, 4 layers: 9 x 128 = 1152 values) and `125m` (d = 768, 12 layers:
25 x 768 = 19 200 values). Inputs uniform in [-1, 1]; times are the minimum over 5 repetitions
(robust to the shared cores).

Masking side: the **floor** of pairwise masking on the same values, built from the secure-aggregation
helper's PRG (`securefed.primitives.prg.accumulate_masks`, AES-256-CTR keystream into uint32): per
holder quantize + (n - 1) pairwise + 1 self mask, server adds the n uploads and removes n self
masks. It leaves out key agreement and Shamir shares (fixed per round), so it flatters masking.
CKKS "round" = the whole `run_ckks_round` in one process (all holders' encryptions, server
validation, decryptor's verified re-sum) without key rotation; rotation is the last column.

## Bytes and time per parameter

| model | N | n | CKKS params | ciphertexts | CKKS B/param (upload) | masking B/param | CKKS encrypt us/param/holder | masking us/param/holder | CKKS validate+add us/param/upload | CKKS decrypt us/param | masking server us/param | CKKS round s | key rotation MB (up+down) |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
{rows}

Reading it:
- A fresh ciphertext is 262 KB for 4096 slots: 64 B per *slot* (16x fp32). Per *parameter* it is
  worse when slots go unused: 228 B/param for the tiny set (1152 of 4096 slots used), 68 B/param for
  125M (19 200 of 20 480). Masking sends 4 B/param (k = 32). N = 16384 halves the ciphertext count
  but wastes more slots here (82 B/param).
- Time: CKKS encryption costs ~5 ms per ciphertext per holder (1.3 us per parameter at 125M),
  about two orders of magnitude above the masking floor per parameter. In absolute terms the CKKS
  part of a 125M round is ~25 ms of encryption per holder; the whole in-process round (all
  holders, server validation, decryptor) takes ~0.3 s at n = 10 and ~1 s at n = 32, most of the
  growth being the decryptor's verified re-sum (`verify_aggregate: false` removes it but trusts
  the server's survivor list, protocols/ckks.md §5.3). At the tiny preset the CKKS part is < 0.1 s
  per round for n <= 10.
- Key rotation: public context {pub:.0f} KB + one {sec:.0f} KB sealed secret context per other key
  holder (relayed, so counted up and down) + adverts. Rotating every round (the default) makes this
  the largest CKKS cost; `rotate_key_every_rounds` trades it against exposure (threat_models/ckks.md
  CK-02, CK-10).

## Error of the released sum vs the plaintext sum (max over all coordinates and rounds)

| model | N | n | CKKS max error | documented bound (protocols/ckks.md §4.4) | masking floor max error (32-bit ring, scale 2^31/(n max|x|)) |
|---|---|---|---|---|---|
{errs}

CKKS at these parameters is ~4 orders of magnitude more precise than 32-bit fixed point; its error
is the noise flooding (sigma = 2^-40), not CKKS noise.

## End-to-end overhead (left to the lead)
The end-to-end round-time overhead of the hybrid route at the default config and at 125M needs the
runtime integration. `ckks_round_overhead(param_layout(model), n_holders, policy)` in this file
gives CKKS-vs-masking seconds and bytes on a model's own small tensors; time `securefed simulate`
with and without the CKKS route for the end-to-end figure.
"""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    results = run(args.quick)
    text = render(results)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (args.out / "results.md").write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
