"""Whole networked rounds in one process (threads, real gRPC + mTLS on 127.0.0.1, synthetic updates):
the coordinator's result equals the plain mean of the clipped updates, and hostile input from an
authenticated holder (garbage frames, other runs/rounds, oversized streams) is refused while the
server keeps serving."""

import hashlib
import threading

import numpy as np
import pytest

from securefed.primitives.quantize import plan_quantization
from securefed.privacy.clipping import l2_clip
from securefed.runtime.netclient import NetClient
from securefed.runtime.netserver import NetServer, ServerPlan
from securefed.secagg import SecAggConfig
from securefed.transport.client import Refused, TransportClient
from securefed.transport.coordinator import Deadlines, Stage
from securefed.transport.frames import FetchRequest, FrameError, Header, Kind, decode, encode
from securefed.transport.pki import make_demo_pki
from securefed.transport.service import load_client_credentials
from securefed.transport.workload import SyntheticHolder, SyntheticServer

DIM, N, ROUNDS = 20_000, 4, 2


@pytest.fixture()
def federation(tmp_path):
    pki = make_demo_pki(tmp_path / "pki", holders=N)
    plan = ServerPlan(rounds=ROUNDS, cohort_size=N, min_holders=N, secagg=SecAggConfig(), clip=1.0,
                      deadlines=Deadlines(join=60, train=60, control=30, upload=30), chunk_size=4096)
    srv = NetServer(plan, SyntheticServer(DIM), pki=pki.root, out=tmp_path / "run", port=0)
    code = {}
    t = threading.Thread(target=lambda: code.setdefault("rc", srv.serve()), daemon=True)
    t.start()
    yield pki, srv, t, code
    srv.server.stop(0)


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
    clients = [NetClient(h, pki=pki.root, target=f"127.0.0.1:{srv.port}", state_dir=tmp_path / f"s{h}",
                         workload_factory=lambda hid, w: SyntheticHolder(hid, int(w["dim"])))
               for h in range(1, N + 1)]
    rcs = {}
    threads = [threading.Thread(target=lambda c=c: rcs.setdefault(c.id, c.run()), daemon=True) for c in clients]
    for th in threads:
        th.start()
    t.join(timeout=120)
    for th in threads:
        th.join(timeout=30)
    assert code.get("rc") == 0 and rcs == {h: 0 for h in range(1, N + 1)}
    theta = srv.workload.theta
    expect = np.zeros(DIM)
    for r in range(ROUNDS):   # θ_{r+1} = θ_r − mean_i clip(Δ_i,r)   (FedAvg, lr 1)
        expect -= np.mean([l2_clip(SyntheticHolder(h, DIM).train_round(np.zeros(DIM, np.float32), r).delta, 1.0)[0]
                           for h in range(1, N + 1)], axis=0)
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
