"""The coordinator + aggregator process of a networked federation (protocols/transport.md §5, §8).

    keygen'd PKI + roster ──► gRPC server (mTLS) ──► RoundBoard (stages, deadlines)
    for r in rounds (from the checkpoint):
        wait for holders → cohort → RoundStart, θ_r → secagg stages → Σ q_i (ring)
        θ_{r+1} = outer.step(RoundPrivacy.decode(Σ) / denominator)
        metrics row → checkpoint (WAL: the round's pending accounting) → PrivacySession ledgers → checkpoint

Crash recovery (§8): the checkpoint is written atomically (runtime.rundir) *before* the round's privacy
accounting is appended and records it as pending; on restart a pending round whose ledger entry is
missing is replayed, one whose entry exists is kept, and a ledger that does not extend the checkpoint's
anchor refuses to start (exit 4). So a ``kill -9`` at any instant neither loses nor double-counts a
round's privacy spend (transport/netprivacy.py).
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from securefed.secagg import Roster
from securefed.privacy import BudgetExhausted, DPConfig
from securefed.privacy.clipping import ClipInfo
from securefed.runtime.rundir import RunDir, atomic_torch_save, atomic_write_text
from securefed.secagg import SecAggConfig, SecAggServer
from securefed.transport.coordinator import Deadlines, RoundBoard
from securefed.transport.frames import DEFAULT_CHUNK
from securefed.transport.netprivacy import NetPrivacy
from securefed.transport.pki import Layout
from securefed.transport.service import Handlers, make_server
from securefed.transport.workload import theta_hash

__all__ = ["ServerPlan", "NetServer", "EXIT", "StateError"]


def _plain(obj):
    """Only what torch.load(weights_only=True) accepts: numpy arrays become tensors, numpy scalars Python."""
    import torch

    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _numpy(obj):
    """Inverse of _plain for a workload state: tensors back to numpy arrays."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return {k: _numpy(v) for k, v in obj.items()}
    return obj

log = logging.getLogger("securefed.server")

# protocols/transport.md §10
EXIT = {"ok": 0, "error": 1, "usage": 2, "auth": 3, "state": 4, "too_few": 5, "unreachable": 6}


class StateError(RuntimeError):
    """Checkpoint and privacy ledger disagree: refuse to continue (exit 4)."""


@dataclass(frozen=True)
class ServerPlan:
    rounds: int
    cohort_size: int
    min_holders: int
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    privacy: DPConfig = field(default_factory=DPConfig)     # modes none / central (netprivacy.py)
    seed: int = 0
    deadlines: Deadlines = field(default_factory=Deadlines)
    chunk_size: int = DEFAULT_CHUNK
    max_aborted_rounds: int = 3

    def __post_init__(self) -> None:
        if self.rounds < 1 or self.cohort_size < 3 or not 3 <= self.min_holders <= self.cohort_size:
            raise ValueError("need rounds >= 1 and 3 <= min_holders <= cohort_size")


class NetServer:
    def __init__(self, plan: ServerPlan, workload, *, pki: str | Path, out: str | Path, host: str = "127.0.0.1",
                 port: int = 0, resume: bool = False, config_text: str = "") -> None:
        self.plan, self.workload, self.resume = plan, workload, resume
        self.pki = Layout(pki)
        self.roster = Roster.load(self.pki.roster)
        NetPrivacy.check(plan.privacy, plan.secagg.ring_bits)
        self.rd = RunDir(out)
        if resume and not self.rd.checkpoint_file.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {self.rd.checkpoint_file}")
        self.rd.create(resume=resume)
        self.spool = self.rd.root / "spool"
        self.privacy = NetPrivacy(plan.privacy, population=len(self.roster.keys), cohort_size=plan.cohort_size,
                                  rounds=plan.rounds, ring_bits=plan.secagg.ring_bits, ledger_dir=self.rd.privacy)
        self.run_id, self.next_round, self.metrics = os.urandom(16), 0, []
        self.sampler = random.Random(plan.seed)
        if resume:
            self._restore()
        else:
            atomic_write_text(self.rd.config, config_text or json.dumps(self.plan_dict(), indent=2) + "\n")
            self._checkpoint(None)
        self.board = RoundBoard(self.run_id, self.spool, chunk_size=plan.chunk_size)
        self.board.on_stage = lambda r, s, expect: self._write_status(stage={"round": r, "stage": s,
                                                                              "expect": expect})
        handlers = Handlers(join=self._join, fetch=self.board.fetch, submit=self.board.submit, status=self.status)
        self.server, self.port = make_server(handlers, host=host, port=port, cert=self.pki.server_cert,
                                             key=self.pki.server_key, ca=self.pki.ca_cert,
                                             roster_ids=frozenset(self.roster.keys),
                                             max_workers=max(32, 3 * len(self.roster.keys) + 8))

    def plan_dict(self) -> dict:
        p = self.plan
        return {"rounds": p.rounds, "cohort_size": p.cohort_size, "min_holders": p.min_holders, "privacy": vars(p.privacy),
                "secagg": vars(p.secagg), "deadlines": vars(p.deadlines), "seed": p.seed,
                "holder_config": {k: v for k, v in self.workload.holder_config().items() if k != "config_yaml"}}

    # ------------------------------------------------------------ RPC: join / status
    def _join(self, hid: int, request: bytes, context) -> bytes:
        log.info("holder %d joined (%s)", hid, context.peer())
        welcome = {"run_id": self.run_id.hex(), "holder": hid, "next_round": self.next_round,
                   "rounds": self.plan.rounds, "privacy_mode": self.plan.privacy.mode, "secagg": vars(self.plan.secagg),
                   "deadlines": vars(self.plan.deadlines), **self.workload.holder_config()}
        return json.dumps(welcome).encode()

    def status(self) -> dict:
        return {"run_id": self.run_id.hex(), "next_round": self.next_round, "rounds": self.plan.rounds,
                "board": self.board.status(), "last": self.metrics[-1] if self.metrics else None}

    # ------------------------------------------------------------ checkpoint (§8)
    def _checkpoint(self, pending_finish: dict | None) -> None:
        state = {"version": 2, "run_id": self.run_id, "next_round": self.next_round, "dim": self.workload.dim,
                 "workload": self.workload.state_dict(), "sampler": self.sampler.getstate(),
                 "privacy": self.privacy.state_dict(), "pending_finish": pending_finish, "metrics": self.metrics,
                 "roster": self.roster.to_dict()}
        atomic_torch_save(_plain(state), self.rd.checkpoint_file)

    def _restore(self) -> None:
        import torch

        st = torch.load(self.rd.checkpoint_file, weights_only=True)  # no pickle: a planted checkpoint must not run code
        if isinstance(st.get("workload"), dict) and st["workload"].get("kind") == "synthetic":
            st["workload"] = _numpy(st["workload"])  # the synthetic workload keeps numpy; LM keeps tensors
        if st.get("version") != 2 or st.get("dim") != self.workload.dim:
            raise StateError(f"checkpoint (version {st.get('version')}, {st.get('dim')} parameters) does not fit "
                             f"this run ({self.workload.dim} parameters)")
        if st.get("roster") != self.roster.to_dict():
            raise StateError("the roster differs from the one this run started with")
        try:
            replayed = self.privacy.restore(st["privacy"], st.get("pending_finish"))
        except ValueError as e:           # LedgerError: entries lost or rewritten since the checkpoint
            raise StateError(f"privacy ledger does not match the checkpoint: {e}") from None
        self.run_id, self.next_round, self.metrics = st["run_id"], int(st["next_round"]), list(st["metrics"])
        self.workload.load_state_dict(st["workload"])
        self.sampler.setstate(st["sampler"])
        self.rd.write_jsonl(self.rd.metrics, self.metrics)
        if replayed or st.get("pending_finish"):
            self._checkpoint(None)
        log.info("resumed run %s at round %d", self.run_id.hex(), self.next_round)

    # ------------------------------------------------------------ rounds
    def serve(self) -> int:
        self.server.start()
        log.info("listening on port %d (mTLS), run %s, %d holders on the roster", self.port, self.run_id.hex(),
                 len(self.roster.keys))
        self._write_status()
        aborted_in_a_row = 0
        try:
            while self.next_round < self.plan.rounds:
                try:
                    row = self.run_round(self.next_round)
                except BudgetExhausted as e:
                    log.warning("stopping: %s", e)
                    break
                if row is None:
                    return EXIT["too_few"]
                if row.get("aborted"):
                    aborted_in_a_row += 1
                    if aborted_in_a_row >= self.plan.max_aborted_rounds:
                        return EXIT["too_few"]
                else:
                    aborted_in_a_row = 0
            self._finish()
            return EXIT["ok"]
        finally:
            self.server.stop(grace=2.0)

    def run_round(self, r: int) -> dict | None:
        p = self.plan
        ready = self.board.wait_for_holders(r, want=p.cohort_size, timeout=p.deadlines.join)
        if len(ready) < p.min_holders:
            log.error("round %d: only %d holders connected (need %d) after %.0fs", r, len(ready), p.min_holders,
                      p.deadlines.join)
            return None
        cohort = sorted(self.sampler.sample(ready, min(p.cohort_size, len(ready))))
        rp = self.privacy.begin(r, cohort, self.workload.dim)      # holders past their caps refuse here
        cohort = sorted(rp.participants)
        if len(cohort) < max(3, p.min_holders):
            raise BudgetExhausted(f"round {r}: only {len(cohort)} holders within their privacy caps")
        theta = self.workload.theta_bytes()
        mhash = theta_hash(theta)
        ctx = b"securefed/transport/v1|" + self.run_id + mhash       # secagg ctx: run id + global-model hash
        sa = SecAggServer(config=p.secagg, cohort=cohort, vector_length=self.workload.dim, round_index=r,
                          session_context=ctx, roster=self.roster)
        manifest = {"round": r, "cohort": cohort, "model_sha256": mhash.hex(), "dim": self.workload.dim,
                    "deadlines": vars(p.deadlines), **NetPrivacy.manifest(rp)}
        out = self.board.run_round(r, cohort, manifest, theta, sa, p.deadlines)
        row = {"round": r, "clients_sampled": len(cohort), "clients_refused": len(rp.refused),
               "clients_survived": len(out.survivors), "joined": list(out.cohort),
               "dropped": sorted(set(out.cohort) - set(out.survivors)), "bytes_up": out.bytes_up,
               "bytes_down": out.bytes_down, "aggregation": "secagg", "seconds": out.stage_seconds.get("total"),
               "stage_seconds": out.stage_seconds}
        pending = None
        if out.aborted:
            row["aborted"] = out.aborted
        else:
            survivors = list(out.survivors)
            total = self.privacy.decode(rp, out.ring_total, survivors)   # Σ_{i∈U3} clip(Δ_i) (+ central noise)
            self.workload.step(total / np.float32(self.privacy.denominator(survivors)))
            infos = {h: ClipInfo(norm=float(out.results[h].get("norm", 0.0)), clipped=out.results[h]["clipped"])
                     for h in survivors if h in out.results}
            losses = [out.results[h]["loss"] for h in survivors if "loss" in out.results.get(h, {})]
            row["train_loss"] = float(np.mean(losses)) if losses else None
            row["clip_fraction"] = float(np.mean([i.clipped for i in infos.values()])) if infos else 0.0
            row["tokens_seen"] = (self.metrics[-1].get("tokens_seen", 0) if self.metrics else 0) + sum(
                out.results.get(h, {}).get("tokens", 0) for h in survivors)
            row.update(self.workload.evaluate())
            pending = NetPrivacy.pending(rp, survivors, infos)
        self.metrics.append(row)
        self.next_round = r + 1
        self.rd.write_jsonl(self.rd.metrics, self.metrics)
        self._checkpoint(pending)                  # WAL: the round's accounting is in the checkpoint first
        if pending is not None:
            entry = self.privacy.finish(rp, pending["survivors"], infos)
            row.update(epsilon=entry.get("epsilon"), delta=entry.get("delta"))
            self.rd.write_jsonl(self.rd.metrics, self.metrics)
            self._checkpoint(None)
        self._write_status()
        line = status_line(row)
        log.info(line, extra={"event": "round", "row": row})
        print(line, flush=True)
        return row

    def _finish(self) -> None:
        """Run-directory contract (shared/DESIGN.md): model/, summary.json, report/."""
        self.workload.export(self.rd.model)
        done = [m for m in self.metrics if not m.get("aborted")]
        summary = {"rounds": len(done), "rounds_aborted": len(self.metrics) - len(done),
                   "tokens": done[-1].get("tokens_seen", 0) if done else 0,
                   "epsilon": self.privacy.epsilon()[0], "delta": self.privacy.epsilon()[1],
                   "wall_seconds": sum(m.get("seconds") or 0 for m in self.metrics), "aggregation": "secagg",
                   "model_params": self.workload.dim, "privacy_mode": self.plan.privacy.mode, "deployment": "network",
                   "fed_eval_ppl": None, "run_id": self.run_id.hex()}
        self.rd.write_json(self.rd.summary, summary)
        self._write_status(final=True)
        try:
            from securefed.report import render_report

            render_report(self.rd.root)
        except Exception as e:  # the report is a convenience: never fail a finished run on it
            log.warning("report not rendered: %s", e)

    def _write_status(self, final: bool = False, stage: dict | None = None) -> None:
        st = {"run_id": self.run_id.hex(), "next_round": self.next_round, "rounds": self.plan.rounds,
              "finished": final, "current": stage, "pid": os.getpid(), "port": self.port, "updated": time.time(),
              "last": self.metrics[-1] if self.metrics else None}
        self.rd.write_json(self.rd.root / "status.json", st)


def status_line(row: dict) -> str:
    if row.get("aborted"):
        return f"round {row['round'] + 1}: ABORTED ({row['aborted']}), joined {row['joined']}"
    loss = f", train_loss {row['train_loss']:.3f}" if row.get("train_loss") is not None else ""
    return (f"round {row['round'] + 1}: joined {row['joined']} dropped {row['dropped']} -> "
            f"{row['clients_survived']}/{row['clients_sampled']} survived{loss}, up {row['bytes_up'] / 1e6:.2f} MB, "
            f"down {row['bytes_down'] / 1e6:.2f} MB, {row['seconds']:.1f}s")
