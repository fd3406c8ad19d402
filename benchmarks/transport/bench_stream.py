"""Streaming benchmarks on loopback with mutual TLS (protocols/transport.md §4).

    # throughput: one 1 GB masked update (P = 250M uint32 words), 1 MiB and 4 MiB chunks
    python benchmarks/transport/bench_stream.py throughput --dim 250000000 --chunk-mib 1
    # memory: the coordinator folds n = 8 concurrent masked updates of P = 125M (500 MB each)
    python benchmarks/transport/bench_stream.py memory --dim 125000000 --holders 8

The receiving side is a separate process running the coordinator's real path: mTLS gRPC service,
header checks, StreamReceiver (order, length, SHA-256), MaskedFold into one RingAccumulator with
its undo journal. Its peak RSS (getrusage ru_maxrss) is what "server memory" means here; the
baseline is the RSS just before the (P,) sum is allocated.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from securefed.transport.accumulate import RingAccumulator, masked_prefix
from securefed.transport.client import TransportClient
from securefed.transport.frames import Ack, FrameError, Kind, decode, encode
from securefed.transport.pki import make_demo_pki
from securefed.transport.service import Handlers, load_client_credentials, make_server
from securefed.transport.stream import StreamReceiver, expect_header

RUN = b"\x01" * 16


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def serve(args) -> int:
    """Receiver process: fold `holders` masked streams, then report and exit."""
    from securefed.transport.pki import Layout

    lay = Layout(args.pki)
    base = rss_mb()
    acc = RingAccumulator(args.dim, 32, Path(args.spool))
    after_alloc = rss_mb()
    done, lock, t_first = threading.Event(), threading.Lock(), []

    def submit(hid, frames, ctx):
        it = iter(frames)
        head = expect_header(decode(next(it)), run_id=RUN, round_index=0, stage=4, kinds=(Kind.MASKED,),
                             max_len=19 + 4 * args.dim)
        with lock:
            t_first.append(time.perf_counter())
        rx = StreamReceiver(head, acc.open(hid))
        try:
            for raw in it:
                rx.feed(decode(raw))
            rx.finish()
        except (FrameError, Exception):
            rx.abort()
            return encode(Ack(1, "refused"))
        if len(acc.committed) == args.holders:
            done.set()
        return encode(Ack(0))

    h = Handlers(join=lambda hid, r, c: json.dumps({"run_id": RUN.hex()}).encode(), fetch=None, submit=submit,
                 status=lambda: {})
    srv, port = make_server(h, host="127.0.0.1", port=0, cert=lay.server_cert, key=lay.server_key, ca=lay.ca_cert,
                            roster_ids=frozenset(range(1, args.holders + 1)), max_workers=args.holders + 4)
    srv.start()
    Path(args.port_file).write_text(str(port))
    done.wait(timeout=1800)
    t_end = time.perf_counter()
    expect = 3 * args.holders                                     # every holder sends words = 3
    ok = bool(np.all(acc.total[:: max(1, args.dim // 1000)] == expect))
    Path(args.result).write_text(json.dumps({"rss_before_alloc_mb": base, "rss_after_alloc_mb": after_alloc,
                                             "peak_rss_mb": rss_mb(), "sum_correct": ok,
                                             "server_seconds": t_end - min(t_first)}))
    srv.stop(1)
    return 0


def drive(args) -> dict:
    import subprocess

    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        pki = make_demo_pki(tmp / "pki", holders=args.holders)
        pf, rf = tmp / "port", tmp / "result.json"
        cmd = [sys.executable, __file__, "_serve", "--pki", str(pki.root), "--dim", str(args.dim), "--holders",
               str(args.holders), "--spool", str(tmp / "spool"), "--port-file", str(pf), "--result", str(rf)]
        proc = subprocess.Popen(cmd, start_new_session=True)
        try:
            for _ in range(600):
                if pf.exists() and pf.read_text():
                    break
                time.sleep(0.1)
            port = int(pf.read_text())
            clients = []
            for hid in range(1, args.holders + 1):
                d = pki.holder_dir(hid)
                c = TransportClient(f"127.0.0.1:{port}", load_client_credentials(cert=d / "cert.pem",
                                    key=d / "key.pem", ca=pki.ca_cert), chunk_size=int(args.chunk_mib * (1 << 20)))
                c.join(b"{}", timeout=30)   # this receiver's Join ignores the hello; the run id is fixed
                c.set_run(RUN)
                clients.append(c)
            # every holder streams the same buffer (all words = 3): no per-holder copies on the sending
            # side, and the receiver can check the folded sum (3·n in every element)
            shared = np.full(args.dim, 3, dtype="<u4")
            errors = []

            def send(c, hid):
                try:
                    c.submit(0, 4, Kind.MASKED, [masked_prefix(hid, 32, args.dim), memoryview(shared)], timeout=1800)
                except Exception as e:  # noqa: BLE001 - reported in the result
                    errors.append(repr(e))
            threads = [threading.Thread(target=send, args=(c, hid)) for hid, c in enumerate(clients, 1)]
            t0 = time.perf_counter()
            for t in threads:         # all holders stream concurrently
                t.start()
            for t in threads:
                t.join()
            secs = time.perf_counter() - t0
            proc.wait(timeout=600)
            res = json.loads(rf.read_text())
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
    nbytes = args.holders * (19 + 4 * args.dim)
    update_mb = (19 + 4 * args.dim) / 1e6
    return {"mode": args.mode, "dim": args.dim, "holders": args.holders, "chunk_mib": args.chunk_mib,
            "update_mb": update_mb, "client_seconds": secs, "throughput_mb_s": nbytes / 1e6 / secs,
            "errors": errors, **res,
            "peak_over_one_update": res["peak_rss_mb"] * 1.048576 / update_mb}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["throughput", "memory", "_serve"])
    ap.add_argument("--dim", type=int, default=250_000_000)
    ap.add_argument("--holders", type=int, default=1)
    ap.add_argument("--chunk-mib", type=float, default=1.0)
    ap.add_argument("--tmp", default=None)
    ap.add_argument("--out", default=None, help="append the JSON result to this file (one object per line)")
    ap.add_argument("--pki"), ap.add_argument("--spool"), ap.add_argument("--port-file"), ap.add_argument("--result")
    args = ap.parse_args()
    if args.mode == "_serve":
        return serve(args)
    res = drive(args)
    print(json.dumps(res, indent=2))
    if args.out:
        with open(args.out, "a") as f:
            f.write(json.dumps(res) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
