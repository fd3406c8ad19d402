"""`securefed simulate`: a whole federation in one process, round by round (Photon's outer loop).

    prepare data (tokenizer on public text; holders' shards; eval splits)      -> before RUN_DIR exists
    for r in rounds:
        cohort   = sample(holders)                     fixed-size or Poisson
        privacy  = session.begin_round(r)              server cap; holders past their own cap refuse
        Δ_i      = holder_i.train_round(θ_r)           K AdamW steps on Lightning Fabric
        Σ        = aggregate(w_i·Δ_i)                  secure aggregation / CKKS / plain baseline
        θ_{r+1}  = outer.step(Σ / denominator)         FedAvg / FedMom / Nesterov
        ledger entry, eval, metrics, atomic checkpoint
    centralized baseline at equal tokens; final model; summary.json; report/
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from securefed.configio import dump_yaml
from securefed.runtime.aggregate import RoundInputs, aggregate_round
from securefed.runtime.baseline import baseline_lr_and_batch, run_centralized_baseline
from securefed.runtime.config import RunConfig
from securefed.runtime.parties import EntropyFactory
from securefed.runtime.progress import Progress
from securefed.runtime.rundir import RunDir, atomic_torch_save, atomic_write_text
from securefed.runtime.export import export_model, versions

log = logging.getLogger("securefed.simulate")

__all__ = ["Simulation", "run_simulation"]


class Simulation:
    def __init__(self, cfg: RunConfig, out: str | Path, *, resume: bool = False, progress: bool = True,
                 stop_after_round: int | None = None) -> None:
        from securefed.training.data import prepare_federated_data

        self.cfg, self.resume, self.stop_after_round = cfg, resume, stop_after_round
        self.progress = Progress(enabled=progress)
        if cfg.aggregation.mode == "plain":
            warnings.warn("aggregation.mode=plain: the server sees every clipped update (baseline only)", stacklevel=2)
        # Everything that can fail on bad input happens before the run directory is touched.
        self.data = prepare_federated_data(cfg.data, n_holders=cfg.federation.n_holders, seed=cfg.seed,
                                           progress=progress)
        self.run_dir = RunDir(out)
        if resume and not self.run_dir.checkpoint_file.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {self.run_dir.checkpoint_file}")
        self._build()
        self.run_dir.create(resume=resume)

    # ------------------------------------------------------------------ setup
    def _build(self) -> None:
        from securefed.privacy import PrivacySession
        from securefed.secagg import Roster, generate_identity
        from securefed.training.flat import get_flat, param_layout
        from securefed.training.models import build_model
        from securefed.training.outer import OuterOptimizer
        from securefed.training.trainer import LocalTrainer

        cfg, fed = self.cfg, self.cfg.federation
        self.model = build_model(cfg.model.preset, vocab_size=len(self.data.tokenizer), seq_len=cfg.data.seq_len,
                                 seed=cfg.seed)
        self.layout = param_layout(self.model)
        self.trainer = LocalTrainer(self.model, cfg.train)
        theta0 = get_flat(self.model)
        self.dim = theta0.numel()
        self.outer = OuterOptimizer(theta0, cfg.outer)
        expected_rounds = math.ceil(fed.rounds * fed.cohort_size / fed.n_holders)
        self.holders = {}
        for i in range(fed.n_holders):
            k = fed.holder_local_steps[i] if fed.holder_local_steps else cfg.train.local_steps
            b = fed.holder_batch_sizes[i] if fed.holder_batch_sizes else cfg.train.batch_size
            hid = i + 1  # holder ids are Shamir x-coordinates: >= 1
            self.holders[hid] = self.trainer.new_holder(hid, self.data.holder_train[i], seed=cfg.seed,
                                                        total_steps=expected_rounds * k, local_steps=k, batch_size=b)
        self.entropy = EntropyFactory(seed=cfg.seed, deterministic=cfg.deterministic_secrets)
        self.identities = {h: generate_identity(self.entropy.for_party(0, h, "identity")) for h in self.holders}
        self.roster = Roster.from_identities(self.identities)
        self.privacy = PrivacySession(cfg.privacy, population=fed.n_holders, cohort_size=fed.cohort_size,
                                      rounds_planned=fed.rounds, sampling=fed.sampling,
                                      ledger_dir=self.run_dir.privacy)
        self.sampler = np.random.default_rng(cfg.seed)
        self.route_plan = self.ckks_keyring = self.ckks_server = None
        if cfg.aggregation.mode == "ckks+secagg":
            from securefed.ckks import CkksServer, make_keyring, plan_routes

            self.route_plan = plan_routes(self.layout, cfg.aggregation.ckks)
            self.ckks_keyring = make_keyring(sorted(self.holders), policy=cfg.aggregation.ckks,
                                             identities=self.identities,
                                             entropy_for=lambda h: self.entropy.for_party(0, h, "ckks-identity"))
            self.ckks_server = CkksServer(cfg.aggregation.ckks, self.ckks_keyring.roster)
        self.metrics: list[dict] = []
        self.start_round = 0

    # ------------------------------------------------------------ checkpoint
    def _checkpoint(self, next_round: int) -> None:
        state = {
            "version": 1, "next_round": next_round, "model_preset": self.cfg.model.preset, "dim": self.dim,
            "outer": self.outer.state_dict(),
            "holders": {h: t.state_dict() for h, t in self.holders.items()},
            "sampler": self.sampler.bit_generator.state,
            "privacy": self.privacy.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }
        atomic_torch_save(state, self.run_dir.checkpoint_file)

    def _restore(self) -> None:
        state = torch.load(self.run_dir.checkpoint_file, weights_only=True)  # no pickle: a planted checkpoint must not run code
        if state.get("model_preset") != self.cfg.model.preset or state.get("dim") != self.dim:
            raise ValueError(f"checkpoint is for model {state.get('model_preset')!r} with {state.get('dim')} parameters, "
                             f"not {self.cfg.model.preset!r} with {self.dim}")
        self.outer.load_state_dict(state["outer"])
        for h, st in state["holders"].items():
            self.holders[int(h)].load_state_dict(st)
        self.sampler.bit_generator.state = state["sampler"]
        self.privacy.load_state_dict(state["privacy"])
        torch.set_rng_state(state["torch_rng"])
        self.start_round = int(state["next_round"])
        self.metrics = [m for m in RunDir.read_jsonl(self.run_dir.metrics) if m["round"] < self.start_round]

    # ------------------------------------------------------------ one round
    def sample_cohort(self) -> list[int]:
        fed, ids = self.cfg.federation, sorted(self.holders)
        if fed.sampling == "poisson":
            q = fed.cohort_size / fed.n_holders
            return [h for h, u in zip(ids, self.sampler.random(len(ids))) if u < q]
        return sorted(int(h) for h in self.sampler.choice(ids, size=fed.cohort_size, replace=False))

    def dropout_plan(self, round_index: int, participants: list[int]):
        """Simulated dropouts: each holder vanishes with federation.dropout_rate at a random stage."""
        from securefed.secagg import DropoutPlan, Stage

        rate = self.cfg.federation.dropout_rate
        if rate <= 0:
            return None
        rng = np.random.default_rng([self.cfg.seed, round_index, 7])
        stages = list(Stage)
        vanish = {h: stages[int(rng.integers(len(stages)))] for h in participants if rng.random() < rate}
        return DropoutPlan(vanish=vanish)

    def run_round(self, r: int) -> dict:
        from securefed.training.flat import flat_hash, set_flat

        t0 = time.perf_counter()
        theta = self.outer.params.clone()
        cohort = self.sample_cohort()
        min_surv = None
        if self.cfg.aggregation.mode != "plain" and len(cohort) >= 3:
            # holders check their caps assuming only t_min survive (fewer shares of noise, larger ε)
            min_surv = self.cfg.aggregation.secagg.thresholds(len(cohort)).min_survivors
        rp = self.privacy.begin_round(r, cohort=cohort, dim=self.dim, min_survivors=min_surv)
        participants = list(rp.participants)
        updates = {}
        for h in self.progress.iter(participants, f"round {r + 1}: local training"):
            updates[h] = self.holders[h].train_round(theta)
        weights = self._weights(updates)
        deltas = {h: u.delta * weights[h] for h, u in updates.items()}
        from securefed.secagg import SecAggAborted

        agg, aborted = None, None
        if deltas:
            try:
                agg = aggregate_round(self, rp, RoundInputs(deltas, r, flat_hash(theta), weights))
            except SecAggAborted as e:  # below threshold: no masked sum revealed, the model stays as it was
                # (with ckks+secagg the CKKS-routed part was already decrypted: README, Secure aggregation)
                aborted = str(e)
                self.progress.print(f"[yellow]round {r + 1} aborted: {e}[/]")
        if agg is not None:
            self.outer.step(agg.total / self._denominator(agg.survivors, weights))
        entry = rp.finish(survivors=list(agg.survivors) if agg else [], clip_infos=agg.clip_infos if agg else {})
        row = {
            "round": r, "clients_sampled": len(cohort), "clients_refused": len(rp.refused),
            "clients_survived": len(agg.survivors) if agg else 0,
            "train_loss": float(np.mean([u.mean_loss for u in updates.values()])) if updates else None,
            "tokens_seen": (self.metrics[-1]["tokens_seen"] if self.metrics else 0)
                           + sum(updates[h].tokens for h in (agg.survivors if agg else [])),
            "bytes_up": (agg.bytes_up if agg else 0),
            "bytes_down": (agg.bytes_down if agg else 0) + 4 * self.dim * len(participants),
            "aggregation": self.cfg.aggregation.mode,
            "clip_fraction": (float(np.mean([bool(ci.clipped) for ci in agg.clip_infos.values()]))
                              if agg and agg.clip_infos else 0.0),
            "epsilon": entry.get("epsilon"), "delta": entry.get("delta"),
        }
        if aborted:
            row["aborted"] = aborted
        record_eps = [u.record_epsilon for u in updates.values() if u.record_epsilon is not None]
        if record_eps:  # record-level DP-SGD inside holders: the largest holder ε so far
            row["record_epsilon_max"] = max(record_eps)
        if (r + 1) % self.cfg.federation.eval_every == 0 or r + 1 == self.cfg.federation.rounds:
            set_flat(self.model, self.outer.params)
            loss = self.trainer.evaluate(self.data.eval_global)
            row.update(eval_loss=loss, eval_ppl=math.exp(min(loss, 700.0)))  # a DP-wrecked model must not crash
        row["seconds"] = time.perf_counter() - t0
        return row

    def _weights(self, updates) -> dict[int, float]:
        if self.cfg.federation.weighting == "uniform" or not updates:
            return {h: 1.0 for h in updates}
        top = max(u.tokens for u in updates.values())
        # w_i = tokens_i / max_j tokens_j <= 1, so w_i·Δ_i keeps the clip bound the quantizer relies on
        return {h: u.tokens / top for h, u in updates.items()}

    def _denominator(self, survivors, weights) -> float:
        if self.cfg.privacy.mode != "none":
            # DP: fixed denominator (planned cohort), so one holder's influence is bounded by C / cohort
            return float(self.cfg.federation.cohort_size)
        return float(sum(weights[h] for h in survivors)) or 1.0

    # ---------------------------------------------------------------- run
    def run(self) -> dict:
        from securefed.training.flat import set_flat

        rd, fed = self.run_dir, self.cfg.federation
        if self.resume:
            self._restore()
        else:
            atomic_write_text(rd.config, dump_yaml(self.cfg) + "# versions: " + json.dumps(versions()) + "\n")
            if self.route_plan is not None:
                atomic_write_text(rd.root / "ckks_plan.txt", self.route_plan.to_text())
                atomic_write_text(rd.root / "ckks_plan.json", self.route_plan.dumps_json())
            rd.write_json(rd.root / "data_manifest.json", self.data.manifest)
            self._checkpoint(0)
        t_start = time.perf_counter()
        from securefed.privacy import BudgetExhausted

        for r in self.progress.iter(range(self.start_round, fed.rounds), "federated rounds"):
            try:
                row = self.run_round(r)
            except BudgetExhausted as e:
                self.progress.print(f"[yellow]stopping: {e}[/]")
                break
            self.metrics.append(row)
            rd.write_jsonl(rd.metrics, self.metrics)
            self._checkpoint(r + 1)
            self.progress.print(_status_line(row))
            if self.stop_after_round is not None and r + 1 >= self.stop_after_round:
                return {"stopped_after_round": r + 1}
        set_flat(self.model, self.outer.params)
        export_model(self.model, self.data.tokenizer, rd.model)
        summary = self._summary(time.perf_counter() - t_start)
        rd.write_json(rd.summary, summary)
        from securefed.report import render_report

        render_report(rd.root)
        return summary

    def _summary(self, seconds: float) -> dict:
        evals = [m for m in self.metrics if "eval_ppl" in m]
        eps = self.privacy.epsilon_spent()
        summary = {
            "fed_eval_ppl": evals[-1]["eval_ppl"] if evals else None,
            "rounds": len(self.metrics), "tokens": self.metrics[-1]["tokens_seen"] if self.metrics else 0,
            "epsilon": eps[0], "delta": eps[1], "wall_seconds": seconds,
            "aggregation": self.cfg.aggregation.mode, "model_params": self.dim,
            "unigram_eval_ppl": self.data.unigram_eval_ppl, "model_preset": self.cfg.model.preset,
            "privacy_mode": self.cfg.privacy.mode,
        }
        if self.cfg.baseline and self.metrics:
            curve = run_centralized_baseline(self.cfg, self.data, [m["tokens_seen"] for m in self.metrics if "eval_ppl" in m],
                                             progress=self.progress)
            self.run_dir.write_jsonl(self.run_dir.baseline / "metrics.jsonl", curve)
            summary["central_eval_ppl"] = curve[-1]["eval_ppl"] if curve else None
            summary["central_lr"], summary["central_batch_size"] = baseline_lr_and_batch(self.cfg)
            if summary["central_eval_ppl"] and summary["fed_eval_ppl"]:
                summary["fed_over_central_ppl"] = summary["fed_eval_ppl"] / summary["central_eval_ppl"]
        return summary


def _status_line(row: dict) -> str:
    ppl = f" eval_ppl {row['eval_ppl']:.2f}" if "eval_ppl" in row else ""
    return (f"round {row['round'] + 1}: {row['clients_survived']}/{row['clients_sampled']} holders, "
            f"train_loss {row['train_loss'] or float('nan'):.3f}{ppl}, up {row['bytes_up'] / 1e6:.2f} MB, "
            f"{row['seconds']:.1f}s")


def run_simulation(cfg: RunConfig, out: str | Path, **kw) -> dict:
    return Simulation(cfg, out, **kw).run()

