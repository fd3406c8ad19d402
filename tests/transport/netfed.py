"""A whole networked federation in one test process: the real Coordinator over the real GrpcChannel, and one
real Holder per thread driven by ``federation.grpc.run_holder`` — gRPC + mutual TLS on 127.0.0.1, the tiny LM.

Tests hook into a holder by replacing its ``handle`` (what run_holder calls for every stage message) and
read what each holder trained (θ_r it received, its Δ and its aggregation weight) to recompute the round's
expected mean of clipped updates independently of the coordinator.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from securefed.federation.coordinator import Coordinator, CoordinatorOptions
from securefed.federation.grpc import GrpcChannel, run_holder
from securefed.federation.holder import Holder
from securefed.federation.messages import Plan, decode_as
from securefed.federation.simulation import holder_configs
from securefed.federation.stages import Deadlines
from securefed.privacy.clipping import l2_clip
from securefed.privacy.remote import spec_plan
from securefed.runtime.config import load_run_config
from securefed.runtime.rundir import RunDir
from securefed.secagg import Roster
from securefed.transport.client import Backoff
from securefed.transport.pki import load_identity, make_demo_pki
from securefed.transport.service import load_client_credentials

# Holders of one process share one model object (federation/data.py: shared_trainer), which the in-process
# channel trains one holder after another. Here they run in threads, so their local training takes turns too.
_TRAIN = threading.Lock()


@dataclass
class Trained:
    theta: np.ndarray                                # (P,) float32: θ_r as the holder received it
    delta: np.ndarray | None = None                  # (P,) float32: Δ = θ_r − θ_local
    weight: float = 1.0
    spec: object = None                              # the final RoundSpec of the Plan


@dataclass
class NetFederation:
    cfg: object
    run: RunDir
    lay: object
    roster: Roster
    channel: GrpcChannel
    coord: Coordinator
    holders: dict[int, Holder]
    trained: dict[tuple[int, int], Trained] = field(default_factory=dict)   # (round, holder) -> what it trained
    rcs: dict[int, int] = field(default_factory=dict)
    summary: dict | None = None
    error: BaseException | None = None

    @classmethod
    def build(cls, tmp_path, overrides: list[str], *, chunk_size: int = 1 << 16, progress=None) -> "NetFederation":
        from securefed.federation.data import coordinator_data

        cfg = load_run_config(overrides=overrides)
        lay = make_demo_pki(tmp_path / "pki", holders=cfg.federation.n_holders)
        roster = Roster.load(lay.roster)
        rd = RunDir(tmp_path / "run")
        rd.create(resume=False)
        channel = GrpcChannel(pki=lay.root, roster=roster, port=0, chunk_size=chunk_size, progress=progress)
        opts = CoordinatorOptions(deadlines=Deadlines.from_config(cfg.network), min_holders=cfg.federation.n_holders,
                                  deployment="network", backend="grpc")
        coord = Coordinator(cfg, channel, rd, data=coordinator_data(cfg, progress=False), roster=roster,
                            identity=load_identity(lay.server_identity), options=opts, progress=progress)
        holders = {h: Holder(hc, identity=load_identity(lay.holder_dir(h) / "identity.key"), roster=roster)
                   for h, hc in holder_configs(cfg, rd.root).items()}
        fed = cls(cfg, rd, lay, roster, channel, coord, holders)
        for h in holders:
            fed._record(h)
        return fed

    def _record(self, h: int) -> None:
        holder = self.holders[h]
        on_model, on_plan = holder._on_model, holder._on_plan

        def model(rs, payload):
            with _TRAIN:
                out = on_model(rs, payload)
            self.trained[(rs.offer.round, h)] = Trained(np.frombuffer(payload, dtype="<f4").copy())
            return out

        def plan(rs, payload):
            t = self.trained[(rs.offer.round, h)]
            p = decode_as(payload, Plan)
            t.delta, t.weight, t.spec = rs.delta.copy(), p.weight, p.spec
            return on_plan(rs, payload)
        holder._on_model, holder._on_plan = model, plan   # Holder.handle dispatches through these attributes

    def creds(self, h: int):
        d = self.lay.holder_dir(h)
        return load_client_credentials(cert=d / "cert.pem", key=d / "key.pem", ca=self.lay.ca_cert)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.channel.port}"

    def run_all(self, timeout: float = 600, *, before_holders=None) -> None:
        """Run the coordinator and every holder to the end (each in a thread); then stop the server.
        ``before_holders()`` runs once the coordinator listens, before any holder has joined."""
        def coordinator():
            try:
                self.summary = self.coord.run()
            except BaseException as e:   # noqa: BLE001 - reported to the test
                self.error = e
        ct = threading.Thread(target=coordinator, daemon=True)
        ct.start()
        opened = threading.Event()
        while not opened.wait(0.05):
            if self.channel.port is not None or not ct.is_alive():
                opened.set()
        if before_holders is not None and ct.is_alive():
            before_holders()
        threads = [threading.Thread(target=self._holder, args=(h,), daemon=True) for h in self.holders]
        for t in threads:
            t.start()
        ct.join(timeout)
        for t in threads:
            t.join(60)
        self.channel.close()
        if self.error is not None:
            raise self.error
        assert not ct.is_alive(), "the coordinator did not finish"

    def _holder(self, h: int) -> None:
        self.rcs[h] = run_holder(self.holders[h], target=self.target, creds=self.creds(h), max_failures=5,
                                 backoff=Backoff(base=0.05, cap=0.2))

    def theta(self) -> np.ndarray:
        return self.coord.outer.params.numpy().copy()

    def expected_step(self, r: int, survivors, denominator: float) -> tuple[np.ndarray, np.ndarray]:
        """(θ_{r+1} without noise, per-coordinate tolerance) = θ_r − Σ_{i∈S} clip(w_i·Δ_i, C) / denominator.

        Tolerance: the quantization bound of the round's plan (dequantize(Σ quantize) vs Σ, including the
        float32 cast of the decoded sum), divided by the denominator, plus the float32 rounding of the
        division and of the outer step θ − mean."""
        ts = [self.trained[(r, h)] for h in survivors]
        theta = ts[0].theta.astype(np.float64)
        total = np.zeros_like(theta)
        for t in ts:
            assert np.array_equal(t.theta, ts[0].theta)          # every holder trained from the same θ_r
            total += l2_clip((t.delta * np.float32(t.weight)) if t.weight != 1.0 else t.delta, t.spec.clip)[0]
        mean = total / denominator
        plan = spec_plan(ts[0].spec)     # distributed DP (a DiscretePlan): the noise dwarfs any rounding bound
        bound = plan.sum_error_bound / denominator if hasattr(plan, "sum_error_bound") else np.nan
        expect = theta - mean
        ulp = np.spacing(np.abs(expect).astype(np.float32)).astype(np.float64)
        return expect, bound + np.abs(mean) * 2.0**-23 + ulp
