"""Whole networked rounds in one process (threads, real gRPC + mTLS on 127.0.0.1, synthetic updates):
the coordinator's result equals the plain mean of the clipped updates, and hostile input from an
authenticated holder (garbage frames, other runs/rounds, oversized streams) is refused while the
server keeps serving."""

import hashlib
import threading

import numpy as np
import pytest

from securefed.primitives.quantize import plan_quantization
from securefed.privacy import DPConfig
from securefed.privacy.clipping import l2_clip
from securefed.privacy.ledger import read_ledger
from securefed.runtime.netclient import NetClient
from securefed.runtime.netserver import NetServer, ServerPlan
from securefed.secagg import SecAggConfig
from securefed.transport.client import Backoff, Refused, TransportClient
from securefed.transport.coordinator import Deadlines, Stage
from securefed.transport.frames import FetchRequest, Header, Kind, decode, encode, iter_stream_frames, sha256_parts
from securefed.transport.pki import make_demo_pki
from securefed.transport.service import load_client_credentials
from securefed.transport.workload import SyntheticHolder, SyntheticServer

DIM, N, ROUNDS = 20_000, 4, 2


def _start(tmp_path, rounds, upload=30.0, privacy=None):
    pki = make_demo_pki(tmp_path / "pki", holders=N)
    plan = ServerPlan(rounds=rounds, cohort_size=N, min_holders=N, secagg=SecAggConfig(), privacy=privacy or DPConfig(),
                      deadlines=Deadlines(join=60, train=60, control=30, upload=upload), chunk_size=4096)
    srv = NetServer(plan, SyntheticServer(DIM), pki=pki.root, out=tmp_path / "run", port=0)
    code = {}
    t = threading.Thread(target=lambda: code.setdefault("rc", srv.serve()), daemon=True)
    t.start()
    return pki, srv, t, code


@pytest.fixture()
def federation(tmp_path):
    pki, srv, t, code = _start(tmp_path, ROUNDS)
    yield pki, srv, t, code
    srv.server.stop(0)


def _clients(pki, srv, tmp_path):
    return [NetClient(h, pki=pki.root, target=f"127.0.0.1:{srv.port}", state_dir=tmp_path / f"s{h}",
                      workload_factory=lambda hid, w: SyntheticHolder(hid, int(w["dim"])), max_failures=5,
                      backoff=Backoff(base=0.05, cap=0.2))
            for h in range(1, N + 1)]


def _run_all(clients, t, timeout=120):
    rcs = {}
    threads = [threading.Thread(target=lambda c=c: rcs.setdefault(c.id, c.run()), daemon=True) for c in clients]
    for th in threads:
        th.start()
    t.join(timeout=timeout)
    for th in threads:
        th.join(timeout=30)
    return rcs


def _mean_clipped(holders, r):
    return np.mean([l2_clip(SyntheticHolder(h, DIM).train_round(np.zeros(DIM, np.float32), r).delta, 1.0)[0]
                    for h in holders], axis=0)


def _creds(pki, h):
    d = pki.holder_dir(h)
    return load_client_credentials(cert=d / "cert.pem", key=d / "key.pem", ca=pki.ca_cert)


def _hostile(pki, port):
    c = TransportClient(f"127.0.0.1:{port}", _creds(pki, 1))
    welcome = c.join({}, timeout=20)
    # garbage frames, a fetch for another run, a stream for a round that is not open, an oversized stream
    assert decode(c.stub.submit(iter([b"garbage", b"\x00" * 10]), timeout=10)).status == 1
    assert decode(c.stub.submit(iter([]), timeout=10)).status == 1
    other = c.stub.fetch(encode(FetchRequest(b"\x07" * 16, 0, 0, 100)), timeout=10)
    assert decode(next(iter(other))).kind == Kind.WAIT
    with pytest.raises(Refused):
        c.submit(7, Stage.ADVERTISE, Kind.SECAGG, b"SFSA\x01\x01not a message", timeout=10)
    huge = Header(c.run_id, 0, Stage.ADVERTISE, Kind.SECAGG, 1 << 40, hashlib.sha256(b"").digest())
    assert decode(c.stub.submit(iter([encode(huge)]), timeout=10)).status == 1
    c.close()
    return welcome


def test_network_rounds_equal_mean_of_clipped_updates_and_survive_garbage(federation, tmp_path):
    pki, srv, t, code = federation
    _hostile(pki, srv.port)
    rcs = _run_all(_clients(pki, srv, tmp_path), t)
    assert code.get("rc") == 0 and rcs == {h: 0 for h in range(1, N + 1)}
    theta = srv.workload.theta
    expect = np.zeros(DIM)
    for r in range(ROUNDS):   # θ_{r+1} = θ_r − mean_i clip(Δ_i,r)   (FedAvg, lr 1)
        expect -= _mean_clipped(range(1, N + 1), r)
    bound = ROUNDS * plan_quantization(clip=1.0, max_clients=N).sum_error_bound / N + 1e-6
    assert np.max(np.abs(theta - expect)) <= bound
    rows = srv.metrics
    assert [r["clients_survived"] for r in rows] == [N] * ROUNDS
    assert all(r["bytes_up"] > 4 * DIM * N for r in rows)      # every masked input crossed in chunks


def test_garbage_only_never_crashes_fetch_parsing(federation):
    pki, srv, _, _ = federation
    c = TransportClient(f"127.0.0.1:{srv.port}", _creds(pki, 2))
    c.join({}, timeout=20)
    for bad in (b"", b"SFTR", b"\xff" * 100, encode(FetchRequest(c.run_id, 0, 200, 10))):
        frames = [decode(f) for f in c.stub.fetch(bad, timeout=10)]
        assert frames and frames[0].kind == Kind.WAIT
    assert c.status(timeout=10)["next_round"] == 0          # still serving
    c.close()


def test_masked_upload_cut_mid_stream_is_undone_and_round_completes(tmp_path):
    """Holder 4's connection breaks after half of its masked input was folded into the running sum:
    the coordinator subtracts those chunks back out, drops holder 4 (secagg reconstructs its masking
    key from shares) and the result is exactly the mean over holders 1-3."""
    pki, srv, t, code = _start(tmp_path, rounds=1, upload=20)
    try:
        clients = _clients(pki, srv, tmp_path)
        rogue = clients[3]
        rogue.tc = TransportClient(f"127.0.0.1:{srv.port}", rogue.creds)
        honest_submit, cut = rogue.tc.submit, {}

        def submit(r, s, kind, parts, *, timeout):
            if kind != Kind.MASKED or cut:
                return honest_submit(r, s, kind, parts, timeout=timeout)
            total, digest = sha256_parts([parts])
            frames = list(iter_stream_frames(rogue.tc.run_id, r, s, kind, [parts], total_len=total, digest=digest,
                                             chunk_size=4096))

            def half():
                yield from frames[: len(frames) // 2]
                cut["at"] = len(frames) // 2
                raise ConnectionError("link lost mid-upload")
            rogue.tc.stub.submit(half(), timeout=timeout)
        rogue.tc.submit = submit
        rcs = _run_all(clients, t)
    finally:
        srv.server.stop(0)
    assert cut["at"] >= 5 and code.get("rc") == 0 and rcs == {h: 0 for h in range(1, N + 1)}
    row = srv.metrics[0]
    assert row["dropped"] == [4] and row["clients_survived"] == 3
    bound = plan_quantization(clip=1.0, max_clients=N).sum_error_bound / 3 + 1e-6
    assert np.max(np.abs(srv.workload.theta + _mean_clipped([1, 2, 3], 0))) <= bound
    assert not list((tmp_path / "run" / "spool").iterdir())          # undo journal removed


def test_central_dp_round_is_noised_and_accounted(tmp_path):
    """privacy.mode=central over the network: the coordinator adds N(0, (zC)^2) to the sum, divides by the
    planned cohort, and the PrivacySession ledger records a finite epsilon for the round."""
    dp = DPConfig(mode="central", mechanism="gaussian", noise_multiplier=1.0, clip=1.0)
    pki, srv, t, code = _start(tmp_path, rounds=1, privacy=dp)
    try:
        rcs = _run_all(_clients(pki, srv, tmp_path), t)
    finally:
        srv.server.stop(0)
    assert code.get("rc") == 0 and rcs == {h: 0 for h in range(1, N + 1)}
    (entry,) = read_ledger(tmp_path / "run" / "privacy" / "ledger.jsonl")
    assert entry["mode"] == "central" and 0 < entry["epsilon"] < float("inf") and entry["survivors"] == [1, 2, 3, 4]
    noise = srv.workload.theta + _mean_clipped(range(1, N + 1), 0)        # θ − (−mean) = −noise / N
    assert abs(float(np.std(noise)) - 1.0 / N) < 0.1 / N                 # std zC/N = 0.25, within 10 %
