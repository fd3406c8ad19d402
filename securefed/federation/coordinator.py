"""The Coordinator role, written once for every channel (protocols/federation.md §4, §6).

    for r in 1..R:
        checkpoint {in flight: r}                      a restart never runs round r again (§6)
        cohort   = sample(available holders)           fixed-size or Poisson
        OFFER    provisional privacy plan              holders decide for themselves (own floors, own ε cap)
        plan     = privacy.begin_round(accepters)      the server's cap; the final plan over the accepters
        [secagg: SECAGG_START, SECAGG_SHARES]          keys first: holders expand their masks while training
        MODEL    θ_r                                   holders train K steps
        PLAN     final plan, per-holder weight         → Ready (tokens, loss)
        checkpoint {in flight: r, pending accounting}   just before Σ can be revealed: a crash after keeps its spend
        Σ        = secure_sum / ckks_sum + secure_sum / plain_sum
        θ_{r+1}  = outer.step(decode(Σ) / denominator)
        eval, metrics row, checkpoint {pending accounting} → ledgers → checkpoint (§6: exactly once)

The coordinator never sees an individual update (except with the warned ``plain`` baseline); it sees
Σ, who is in it, each holder's decision and its round report (tokens, loss).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
from rich.markup import escape

from securefed.configio import dump_yaml, to_dict
from securefed.federation.aggregation import MAX_CONTROL, CkksRoute, SecureSession, plain_sum
from securefed.federation.channel import Channel
from securefed.federation.holder import announce_model, model_sha256, session_context, withdraw_model
from securefed.federation.messages import Decision, MessageError, Offer, Plan, Ready, Welcome, decode, encode
from securefed.federation.stages import Deadlines, Stage
from securefed.privacy import BudgetExhausted, PrivacySession
from securefed.privacy.accountant import epsilon_text
from securefed.privacy.clipping import ClipInfo
from securefed.privacy.remote import round_spec
from securefed.primitives.quantize import dequantize_sum
from securefed.runtime.health import as_number, format_ppl, update_shortfall
from securefed.runtime.parties import SERVER_PARTY, EntropyFactory
from securefed.runtime.rundir import (DirectoryInUse, RunDir, atomic_torch_save, atomic_write_text, file_sha256,
                                      hold_exclusive)
from securefed.secagg import Roster, SecAggAborted

__all__ = ["Coordinator", "CoordinatorOptions", "StateError", "PreflightRefused", "privacy_preflight", "status_line"]

log = logging.getLogger("securefed.coordinator")


class StateError(RuntimeError):
    """Checkpoint and privacy ledger disagree: refuse to continue (exit 4)."""


class PreflightRefused(ValueError):
    """The pre-flight privacy check finds that this configuration cannot learn (protocols/dp.md §12)."""


def privacy_preflight(cfg, *, dim: int, records: Sequence[int] | None, documents: Sequence[int] | None = None,
                      resumed_ledgers: Path | None = None):
    """The pre-flight privacy check of a run (privacy/preflight.py), before anything is trained or written:
    PreflightError (no guarantee) or PreflightRefused (cannot learn, not forced); else the Preflight.
    ``records`` / ``documents``: per holder, in holder order (holder i+1 is shard i), the rows its DP-SGD samples
    from and its documents or groups (federation.data.record_counts); None where the holders check their own
    (network mode). Each holder is checked at its own batch size and local steps (federation.holder_batch_sizes /
    holder_local_steps), and the check states the one with the largest record-level ε.
    ``resumed_ledgers``: a resumed run's RUN_DIR/privacy — the check accounts under the scheme its ledger began
    with, as the run will (dp.md §6.5); LedgerError (a ValueError) if that cannot be read."""
    from securefed.privacy.preflight import RecordLevel, preflight
    from securefed.privacy.session import run_scheme

    fed, t = cfg.federation, cfg.train
    secure, n = cfg.aggregation.mode != "plain", fed.cohort_size
    t_min = cfg.aggregation.secagg.thresholds(n).min_survivors if secure and n >= 3 else None
    rec = None
    if t.dp_sgd.enabled and records:
        # every round: under cohort sampling any holder may be drawn into all R cohorts, and nothing but its own cap
        # stops it spending their steps. The expected ⌈R·m/N⌉ (used before PV-33) read ε 1.255 for a run in which a
        # holder could spend 1.280 (R 8, m 3 of N 4, K 1), with no cap or warning to catch it (dp.md §10.5, §12)
        joins = fed.rounds
        units = list(documents) if documents else list(records)
        rec = []
        for i, rows in enumerate(records):
            k = fed.holder_local_steps[i] if fed.holder_local_steps else t.local_steps
            bs = fed.holder_batch_sizes[i] if fed.holder_batch_sizes else t.batch_size
            rec.append(RecordLevel(noise_multiplier=t.dp_sgd.noise_multiplier, max_grad_norm=t.dp_sgd.max_grad_norm,
                                   delta=t.dp_sgd.delta, batch_size=bs, records=rows, steps=k * joins,
                                   max_records=max(records), unit=t.dp_sgd.unit, max_documents=max(units),
                                   sample_rate=t.dp_sgd.sample_rate,
                                   documents=units[i], padded_rows=t.dp_sgd.padded_batch(bs),
                                   epsilon_cap=t.dp_sgd.epsilon_cap, rounds_steps=k, holder=i + 1))
    kw = {} if resumed_ledgers is None else {"scheme": run_scheme(resumed_ledgers)}
    pf = preflight(cfg.privacy, population=fed.n_holders, cohort_size=n, rounds=fed.rounds, dim=dim,
                   sampling=fed.sampling, min_survivors=t_min, record_level=rec, **kw)
    if not pf.ok:
        raise PreflightRefused("\n".join(pf.lines()) + "\n(set privacy.force_unlearnable=true to train anyway)")
    return pf


# the most devices one data-parallel holder trains on: a Ready claiming more tokens than K·B·T on this many is a lie
MAX_DEVICES_PER_HOLDER = 1024


@dataclass(frozen=True)
class CoordinatorOptions:
    deadlines: Deadlines = field(default_factory=Deadlines)
    min_holders: int | None = None            # holders needed to open a round (default: the secagg t_min, else 1)
    max_aborted_rounds: int | None = None     # stop after this many aborted rounds in a row (None: never)
    deployment: str = "simulation"            # recorded in summary.json: simulation | network
    backend: str = "inproc"


class Coordinator:
    def __init__(self, cfg, channel: Channel, run_dir: RunDir, *, data, roster: Roster, identity,
                 options: CoordinatorOptions = CoordinatorOptions(), progress=None, resume: bool = False,
                 stop_after_round: int | None = None, preflight=None) -> None:
        """``identity``: the coordinator's Ed25519 key (it signs the privacy ledgers; pki server/identity.key).
        ``preflight``: the run's pre-flight check (privacy_preflight), written to RUN_DIR/preflight.json."""
        from securefed.training.flat import get_flat, param_layout
        from securefed.training.models import build_model
        from securefed.training.outer import OuterOptimizer
        from securefed.training.trainer import DPSGDConfig, LocalTrainer

        self.cfg, self.channel, self.rd, self.data, self.roster = cfg, channel, run_dir, data, roster
        self.identity, self.preflight = identity, preflight
        try:   # one coordinator per run directory (federation.md §6): a second process is refused, not interleaved
            hold_exclusive(run_dir.root, "the run directory")
        except DirectoryInUse as e:
            raise StateError(str(e)) from None
        from securefed.runtime.progress import Progress

        self.opt, self.resume, self.stop_after_round = options, resume, stop_after_round
        self.progress = progress if progress is not None else Progress(enabled=False)
        fed = cfg.federation
        self.holder_ids = sorted(roster.keys)
        if len(self.holder_ids) != fed.n_holders:
            # protocols/dp.md §2.1: the population is the N of the sampling rate q = m/N the release ε is amplified
            # by, and of a central plan's quantization: it is the roster's size, never a number of its own
            raise ValueError(f"the roster lists {len(self.holder_ids)} holders, but federation.n_holders (the population "
                             f"the sampling rate and the privacy ledger use) is {fed.n_holders}: they must be equal")
        self.population = len(self.holder_ids)
        # θ0: the seed's random init, or a public checkpoint's (model.init_from, dp.md §13; its tokenizer was
        # checked against the run's by federation.data.coordinator_data)
        model = build_model(cfg.model.preset, vocab_size=len(data.tokenizer), seq_len=cfg.data.seq_len, seed=cfg.seed,
                            init_from=cfg.model.init_from)
        self.evaluator = LocalTrainer(model, replace(cfg.train, dp_sgd=DPSGDConfig()))
        self.layout = param_layout(model)
        theta0 = get_flat(model)
        self.dim = theta0.numel()
        self.init_sha256 = model_sha256(theta0.numpy().astype("<f4", copy=False).tobytes())
        self.outer = OuterOptimizer(theta0, cfg.outer)
        self.entropy = EntropyFactory(seed=cfg.seed, deterministic=cfg.deterministic_secrets)
        if resume:   # the run id goes into every ledger entry: take it from the checkpoint before the session
            run_id = _load_checkpoint(self.rd.checkpoint_file).get("run_id")
            if not isinstance(run_id, str) or len(run_id) != 32:
                raise StateError(f"{self.rd.checkpoint_file} names no run id: restore it from a backup")
            self.run_id = bytes.fromhex(run_id)
        else:
            self.run_id = (hashlib.sha256(f"securefed-run|{cfg.seed}".encode()).digest()[:16]
                           if cfg.deterministic_secrets else os.urandom(16))
        # holders decide on their own caps (protocols/federation.md §5): the server keeps only its own
        self.privacy = PrivacySession(replace(cfg.privacy, holder_epsilon_cap=None), population=self.population,
                                      cohort_size=fed.cohort_size, rounds_planned=fed.rounds, sampling=fed.sampling,
                                      ledger_dir=self.rd.privacy, signer=identity, run_id=self.run_id.hex())
        # amplification by subsampling assumes the cohorts are secret (dp.md §2.1): each round's draw is seeded afresh
        # from the OS (sample_cohort), never from the run's public seed (config.yaml), which let anyone recompute every
        # cohort; only deterministic_secrets (tests) keeps this one seeded stream, restored on a resume
        self.sampler = np.random.default_rng(cfg.seed)
        self.ckks = self.route_plan = None
        if cfg.aggregation.mode == "ckks+secagg":
            from securefed.ckks import plan_routes

            self.route_plan = plan_routes(self.layout, cfg.aggregation.ckks)
            self.ckks = CkksRoute(cfg.aggregation.ckks, roster, ckks_size=self.route_plan.ckks_size)
        self.next_round, self.metrics, self.wall, self.start_ppl = 1, [], 0.0, None
        self._agg_laps: dict[str, float] = {}   # the secure aggregate stage's phases in the current round
        self.model_file: str | None = None
        self.model_restarts: list[dict] = []          # lossy resumes (checkpoint_every > 1), kept in the checkpoint
        # every resume, lossless or not ({resumed_at_round, in_flight_round}), kept in the checkpoint: the one record of
        # the run's interruptions that summary.json and the report state (a signer needs the run's history)
        self.resumes: list[dict] = []
        self._restart_warning: str | None = None      # said once, in the first round after a lossy resume

    # ------------------------------------------------------------------ per-holder settings
    def _index(self, h: int) -> int:
        return self.holder_ids.index(h)

    def local_steps(self, h: int) -> int:
        ks = self.cfg.federation.holder_local_steps
        return ks[self._index(h)] if ks else self.cfg.train.local_steps

    def batch_size(self, h: int) -> int:
        bs = self.cfg.federation.holder_batch_sizes
        return bs[self._index(h)] if bs else self.cfg.train.batch_size

    def welcome_for(self, h: int) -> bytes:
        cfg, fed = self.cfg, self.cfg.federation
        k = self.local_steps(h)
        per_holder_rounds = math.ceil(fed.rounds * fed.cohort_size / fed.n_holders)
        agg = cfg.aggregation
        included = self.privacy.holder_included_rounds(h)
        return encode(Welcome(
            run_id=self.run_id, holder_id=h, rounds=fed.rounds, next_round=self.next_round,
            model_preset=cfg.model.preset, vocab_size=len(self.data.tokenizer), seq_len=cfg.data.seq_len, dim=self.dim,
            tokenizer_sha256=self.data.tokenizer_sha256, init_sha256=self.init_sha256, seed=cfg.seed,
            aggregation=agg.mode, secagg=agg.secagg, ckks=agg.ckks if agg.mode == "ckks+secagg" else None,
            privacy_mode=cfg.privacy.mode, sampling=fed.sampling, train=cfg.train, local_steps=k,
            batch_size=self.batch_size(h), total_steps=per_holder_rounds * k,
            included_rounds=len(included), last_included_round=max(included, default=0)))

    # ------------------------------------------------------------------ checkpoint (§6)
    def _save_model(self, after_round: int) -> None:
        """The heavy state (θ and the outer optimizer's buffers: 2·P floats) in its own file, written only
        every ``federation.checkpoint_every`` rounds; the light checkpoint below names the current one."""
        name = f"model-{after_round}.pt"
        atomic_torch_save({"after_round": after_round, "outer": self.outer.state_dict()}, self.rd.checkpoints / name)
        self.model_file, self._stale_model = name, getattr(self, "model_file", None)

    def _checkpoint(self, *, in_flight: int | None = None, pending: dict | None = None) -> None:
        """The light checkpoint (protocols/federation.md §6), written before and twice after each round."""
        state = {"version": 4, "run_id": self.run_id.hex(), "next_round": self.next_round, "in_flight": in_flight,
                 "model_preset": self.cfg.model.preset, "dim": self.dim, "model_file": self.model_file,
                 "sampler": self.sampler.bit_generator.state, "privacy": self.privacy.state_dict(), "pending": pending,
                 "metrics": self.metrics, "ckks_generation": self.ckks.generation if self.ckks else 0,
                 "roster": self.roster.to_dict(), "wall": self.wall, "start_ppl": self.start_ppl,
                 "model_restarts": self.model_restarts, "resumes": self.resumes}
        atomic_torch_save(state, self.rd.checkpoint_file)
        stale = getattr(self, "_stale_model", None)
        if stale and stale != self.model_file:   # the light checkpoint no longer names it
            (self.rd.checkpoints / stale).unlink(missing_ok=True)
            self._stale_model = None

    def _record_resume_changes(self) -> None:
        """Settings a resumed run may change (deadlines, streaming: transport.md §8.1) are logged and written into
        config.yaml, keeping its versions line; anything else was refused before the run started (check_out_dir)."""
        import yaml

        from securefed.configio import parse_yaml
        from securefed.runtime.config import RESUME_MAY_CHANGE, config_differences

        try:
            text = self.rd.config.read_text()
            old = parse_yaml(text)
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return          # (check_out_dir refused an unreadable config.yaml; a harness resumes without one)
        changed = [d for d in config_differences(old if isinstance(old, dict) else {}, to_dict(self.cfg))
                   if d[0] in RESUME_MAY_CHANGE]
        if not changed:
            return
        for k, a, b in changed:
            log.warning("resuming with %s = %r (it was %r)", k, b, a)
        tail = "".join(line for line in text.splitlines(keepends=True) if line.startswith("# versions: "))
        atomic_write_text(self.rd.config, dump_yaml(self.cfg) + tail)

    def _restore(self) -> None:
        st = _load_checkpoint(self.rd.checkpoint_file)   # no pickle: a planted checkpoint must not run code
        if st.get("version") != 4 or st.get("model_preset") != self.cfg.model.preset or st.get("dim") != self.dim:
            raise StateError(f"checkpoint is for model {st.get('model_preset')!r} with {st.get('dim')} parameters "
                             f"(version {st.get('version')}), not {self.cfg.model.preset!r} with {self.dim}")
        if st.get("roster") != self.roster.to_dict():
            raise StateError("the roster differs from the one this run started with")
        try:
            self.privacy.load_state_dict(st["privacy"])
            replayed = self._complete_pending(st)
        except ValueError as e:           # LedgerError: entries lost or rewritten since the checkpoint
            raise StateError(f"privacy ledger does not match the checkpoint: {e}") from None
        self.run_id, self.next_round = bytes.fromhex(st["run_id"]), int(st["next_round"])
        self.metrics, self.wall, self.start_ppl = list(st["metrics"]), float(st.get("wall", 0.0)), st.get("start_ppl")
        self.model_file = st["model_file"]
        heavy = _load_checkpoint(self.rd.checkpoints / str(self.model_file))
        self.outer.load_state_dict(heavy["outer"])
        self.model_restarts = list(st.get("model_restarts", []))
        self.resumes = list(st.get("resumes", []))
        last_done = self.next_round - 1
        in_flight = None
        self.sampler.bit_generator.state = st["sampler"]
        if self.ckks:
            self.ckks.generation = int(st["ckks_generation"])
        if st.get("in_flight") is not None:   # killed mid-round: that round index is never run again
            r = in_flight = int(st["in_flight"])
            revealed = bool(st.get("pending")) and st["pending"].get("round") == r
            log.warning("round %d was in flight when the coordinator stopped: it counts as aborted%s", r,
                        " (its sum had been revealed: its privacy spend is accounted, its update discarded)"
                        if revealed else "")
            why = ("the coordinator restarted after this round's sum was revealed: its privacy spend is accounted, "
                   "its update discarded" if revealed else "the coordinator restarted during this round")
            self.metrics.append({"round": r, "aborted": why,
                                 "clients_sampled": 0, "clients_survived": 0, "aggregation": self.cfg.aggregation.mode})
            self.next_round = r + 1
        # checkpoint_every > 1: rounds completed since the model file are in the ledger, not in θ. Aborted ones never
        # moved the model: a resume after a resume that aborted the round in flight claimed that round "lost" (a review)
        # Nor are rounds an earlier resume already declared lost declared again (the report adds them up)
        aborted = {m.get("round") for m in self.metrics if m.get("aborted")}
        declared = {r for m in self.model_restarts for r in range(int(m["lost_rounds"][0]), int(m["lost_rounds"][1]) + 1)}
        done_since = [r for r in range(int(heavy["after_round"]) + 1, last_done + 1) if r not in aborted | declared]
        if done_since:
            lost = [done_since[0], done_since[-1]]   # summary.json's shape; the report leaves aborted rounds out
            said = (f"round {lost[0]}" if len(done_since) == 1 else f"rounds {lost[0]}-{lost[1]}"
                    + ("" if len(done_since) == lost[1] - lost[0] + 1 else " (the aborted ones aside)"))
            why = (f"the model resumed from its state after round {int(heavy['after_round'])}: the updates of "
                   f"{said} are lost (their privacy spend stays accounted; "
                   f"federation.checkpoint_every is {self.cfg.federation.checkpoint_every}), so the curve before and "
                   "after is not one run")
            log.warning(why)
            self.model_restarts.append({"resumed_at_round": self.next_round,
                                        "model_after_round": int(heavy["after_round"]), "lost_rounds": lost})
            self._restart_warning = why
        self.resumes.append({"resumed_at_round": self.next_round, "in_flight_round": in_flight})
        log.info("resumed from the checkpoint at round %d (resume %d of this run)", self.next_round, len(self.resumes))
        self._fill_privacy_fields()
        self.rd.write_jsonl(self.rd.metrics, self.metrics)
        self._checkpoint()   # the resume is on record before anything else runs

    def _complete_pending(self, st: dict) -> bool:
        """A round whose accounting was checkpointed but not (fully) appended is completed, once."""
        p = st.get("pending")
        if not p:
            return False
        tail = self.privacy.ledger.entries[int(st["privacy"]["ledger_entries"]):]
        if any(e.get("round") == p["round"] for e in tail):
            return False
        rp = self.privacy.begin_round(p["round"], cohort=p["cohort"], dim=p["dim"], min_survivors=p["min_survivors"],
                                      refused=p["refused"])
        infos = {int(h): ClipInfo(norm=0.0, clipped=bool(c)) for h, c in p["clipped"].items()}
        rp.finish(survivors=p["survivors"], clip_infos=infos, completing=True,   # holders already charged: not again
                  in_masked_sum=p.get("n_masked"))
        log.warning("completed round %d's privacy accounting from the checkpoint", p["round"])
        return True

    # ------------------------------------------------------------------ the run
    def start(self) -> None:
        """Everything before the first round (or the resumed round): the run directory's files, the
        untrained model's perplexity, the metrics log and health checker, the holders' Join (Welcome).
        ``run`` calls it; a harness that drives ``run_round`` itself (securefed/audit) calls it first."""
        from securefed.runtime.health import RunHealth
        from securefed.runtime.metrics_log import MetricsLog

        rd, fed = self.rd, self.cfg.federation
        if self.resume:
            self._restore()
            self._record_resume_changes()
        else:
            from securefed.runtime.export import versions

            atomic_write_text(rd.config, dump_yaml(self.cfg) + "# versions: " + json.dumps(versions()) + "\n")
            if self.route_plan is not None:
                atomic_write_text(rd.root / "ckks_plan.txt", self.route_plan.to_text())
                atomic_write_text(rd.root / "ckks_plan.json", self.route_plan.dumps_json())
            if self.data.manifest is not None:   # which sources, documents and tokens (simulation: every holder's)
                rd.write_json(rd.root / "data_manifest.json", self.data.manifest)
            # the public keys a verifier checks the signed ledgers with (protocols/dp.md §7)
            rd.write_json(rd.privacy / "keys.json", {"version": 1, "coordinator": self.identity.public_bytes.hex(),
                                                    "holders": {str(h): k.hex() for h, k in sorted(self.roster.keys.items())}})
            if self.preflight is not None:
                rd.write_json(rd.root / "preflight.json", self.preflight.to_dict())
                for line in self.preflight.lines():
                    self._say(line)
            # the untrained model's perplexity (a health baseline) and θ_0 on disk: minutes for a large model or
            # eval split, or while Ray actors start on the same cores, so a phase of its own, not a silence
            with self.progress.phase("start", label="evaluating and saving the untrained model"):
                if self.data.eval_rows is not None:
                    self.start_ppl = self.evaluate()["eval_ppl"]
                self._save_model(0)
                self._checkpoint()
        self.log = MetricsLog.open(rd, self.cfg.logging, resume_round=self.next_round if self.resume else None)
        self.health = RunHealth(unigram_ppl=self.data.unigram_eval_ppl, start_ppl=self.start_ppl,
                                rounds_planned=fed.rounds)
        for row in self.metrics:      # rebuild the checker's memory of earlier rounds
            self.health.check(row)
        self.channel.open(welcome_for=self.welcome_for, run_id=self.run_id)

    def run(self) -> dict:
        fed = self.cfg.federation
        self.start()
        aborted_in_a_row, last, why, ran = 0, self.next_round - 1, "finished", 0
        with self.progress.phase("rounds", total=fed.rounds - self.next_round + 1, label="federated rounds") as phase:
            for r in range(self.next_round, fed.rounds + 1):
                t0 = time.perf_counter()
                try:
                    row = self.run_round(r)
                except BudgetExhausted as e:
                    self._say(f"stopping: {e}")
                    why = "budget"
                    break
                self.wall += time.perf_counter() - t0
                phase.advance()
                last, ran = r, ran + 1
                if row is None:
                    self.exit_reason = why = "too_few"
                    break
                aborted_in_a_row = aborted_in_a_row + 1 if row.get("aborted") else 0
                if self.opt.max_aborted_rounds and aborted_in_a_row >= self.opt.max_aborted_rounds:
                    self.exit_reason = why = "too_few"
                    self._say(f"stopping: {aborted_in_a_row} rounds in a row aborted")
                    break
                if self.stop_after_round is not None and r >= self.stop_after_round:
                    self.log.close()
                    self.channel.end_run(why="stopped", after_round=r)
                    return {"stopped_after_round": r}
        if why == "finished" and self.metrics and all(m.get("aborted") for m in self.metrics):
            # every round aborted (too few accepted or survived each one, or each failed: a CKKS route whose messages
            # no holder can take): the model never moved, and the run "finished" with exit 0 (a newcomer's review)
            self._say(f"stopping: all {len(self.metrics)} rounds aborted; the model was never updated", warning=True)
            self.exit_reason = why = "too_few"
        self.log.close()
        self.ended = why        # "finished", "budget" or "too_few": summary.json says why the run ended
        summary = self.finish()
        # protocols/transport.md §5.4: holders learn why it ended. Resumed with no round left to run (killed after
        # the last round's sum), no holder has asked this process anything yet: the roster is waited for, for as
        # long as a first round would wait for it, so the holders cut off mid-round are told and exit 0
        idle_resume = self.resume and ran == 0
        self.channel.end_run(why=why, after_round=last, expect=sorted(self.roster.keys) if idle_resume else (),
                             within=self.opt.deadlines.join if idle_resume else 0.0)
        return summary

    def _say(self, msg: str, *, warning: bool = False) -> None:
        """One line for the operator. Under `securefed server` (deployment network) its log on stderr is the
        console: the line goes there once, at its level (printed as well, every line showed twice, and a warning
        carried rich markup into the log as an INFO record). A simulation shows it on its progress console, a
        warning in red."""
        if self.opt.deployment == "network" or (warning and not self.progress.enabled):
            # `simulate --quiet` (no progress console): a warning still reaches stderr through the log at its level
            # (README: a run that goes wrong says so while it runs); it was an INFO record, shown by nothing
            log.log(logging.WARNING if warning else logging.INFO, msg)
            return
        log.info(msg)
        self.progress.print(f"[bold red]{escape(msg)}[/]" if warning else msg)

    def sample_cohort(self, available: list[int]) -> list[int]:
        fed, ids = self.cfg.federation, sorted(available)
        if not self.cfg.deterministic_secrets:   # 128 fresh OS bits per round: no round's cohort predicts another's
            self.sampler = np.random.default_rng(int.from_bytes(os.urandom(16), "little"))
        if fed.sampling == "poisson":   # the rate the ledger states (sampling_rate = cohort_size / population)
            q = fed.cohort_size / self.population
            return [h for h, u in zip(ids, self.sampler.random(len(ids))) if u < q]
        # fixed size: m of the whole roster, then the available among them — each holder's chance is m/N, the rate the
        # ledger states; m of the available only would be m/|available| > m/N (an audit: under-stated q, so ε)
        drawn = self.sampler.choice(self.holder_ids, size=min(fed.cohort_size, len(self.holder_ids)), replace=False)
        here = set(ids)
        return sorted(int(h) for h in drawn if int(h) in here)

    def _t_min(self, n: int) -> int | None:
        if self.cfg.aggregation.mode == "plain" or n < 3:
            return None
        return self.cfg.aggregation.secagg.thresholds(n).min_survivors

    def _weights(self, participants: list[int]) -> dict[int, float]:
        """w_i = tokens_i / max_j tokens_j ≤ 1 (tokens = K·B, set by the coordinator), so w·Δ keeps the clip bound."""
        if self.cfg.federation.weighting == "uniform" or not participants:
            return {h: 1.0 for h in participants}
        tokens = {h: self.local_steps(h) * self.batch_size(h) for h in participants}
        top = max(tokens.values())
        return {h: t / top for h, t in tokens.items()}

    def _claims_checked(self, r: int, h: int, msg: Ready) -> Ready:
        """A Ready's ``tokens`` and ``loss`` are the holder's own claims; they enter only the metrics (the weights are
        the coordinator's K·B, §4.1). One no honest holder can make is replaced, with a warning, so that one holder
        cannot make ``tokens_seen`` 1.8e16 or the reported loss infinite (audit: a malicious holder). An honest
        holder trains K steps of B rows of T tokens on each of its devices (a data-parallel holder, on several)."""
        per_device = self.local_steps(h) * self.batch_size(h) * self.cfg.data.seq_len
        tokens, loss = msg.tokens, msg.loss
        if not (tokens > 0 and tokens % per_device == 0 and tokens // per_device <= MAX_DEVICES_PER_HOLDER):
            log.warning("round %d: holder %d reported %d tokens, not K·B·T = %d on 1 to %d devices; counted %d",
                        r, h, tokens, per_device, MAX_DEVICES_PER_HOLDER, per_device)
            tokens = per_device
        if loss is not None and loss < 0:
            log.warning("round %d: holder %d reported a negative loss (%g), which no cross-entropy is; left out of the "
                        "train loss", r, h, loss)
            loss = None
        return msg if (tokens, loss) == (msg.tokens, msg.loss) else replace(msg, tokens=tokens, loss=loss)

    def run_round(self, r: int) -> dict | None:
        cfg, fed, dl = self.cfg, self.cfg.federation, self.opt.deadlines
        t0 = time.perf_counter()
        clock = _Clock()
        self._agg_laps = {}
        self._checkpoint(in_flight=r)
        available = self.channel.available(r, want=fed.n_holders, timeout=dl.join)   # sample from the whole roster
        need = self.opt.min_holders or 1
        if len(available) < need:
            log.error("round %d: only %d holders available (need %d)", r, len(available), need)
            self._checkpoint()
            return None
        # θ_r, one copy (5.3 GB at 1.3b), hashed as it is copied; in-process holders are handed this very object,
        # which model_sha256 does not hash again for their H4 check (federation.md §4.2)
        theta_bytes, mhash = announce_model(self.outer.params.numpy().astype("<f4", copy=False))
        cohort = self.sample_cohort(available)
        secure = cfg.aggregation.mode != "plain"
        rp0 = self.privacy.begin_round(r, cohort=cohort, dim=self.dim, min_survivors=self._t_min(len(cohort)))
        row = {"round": r, "clients_sampled": len(cohort), "aggregation": cfg.aggregation.mode}
        decisions: dict[int, Decision] = {}
        clock.lap("prepare")   # the write-ahead checkpoint, θ's bytes and SHA-256, sampling
        if cohort and (not secure or len(cohort) >= 3):
            offer = encode(Offer(r, tuple(cohort), mhash, round_spec(rp0)))
            for h, data in self.channel.exchange(r, Stage.OFFER, {h: offer for h in cohort}, deadline=dl.control,
                                                 max_reply=MAX_CONTROL).items():
                d = _decode(data, Decision, h, r)
                if d is not None:
                    decisions[h] = d
        clock.lap("offer")
        accepted = [h for h in cohort if h in decisions and decisions[h].accept]
        refused = [h for h in cohort if h not in accepted]
        refusals = {str(h): decisions[h].reason if h in decisions else "no answer" for h in refused}
        t_min = self._t_min(len(accepted))
        # with each holder's own reason: the ledger and the report say why, not "refused the round"
        rp = self.privacy.begin_round(r, cohort=cohort, dim=self.dim, min_survivors=t_min,
                                      refused={h: refusals[str(h)] for h in refused})
        participants = list(rp.participants)
        ready: dict[int, Ready] = {}

        def pending_for(surv: list[int], masked: int | None = None) -> dict:
            """The round's accounting as the WAL holds it (§6): completed once on a restart. ``masked``: how many
            masked inputs the sum holds, where fewer than the charged ``surv`` (ckks+secagg, A \\ B)."""
            return {"round": r, "cohort": list(cohort), "dim": self.dim, "survivors": list(surv), "refused": refused,
                    "min_survivors": t_min, "n_masked": masked if masked is not None and masked < len(surv) else None,
                    "clipped": {str(h): bool(ready[h].clipped) for h in surv
                                if h in ready and ready[h].clipped is not None}}
        result, aborted = None, None
        session, dropped = None, ()
        revealed: set[int] = set()   # every holder whose update entered a part of the sum revealed to this process
        masked_n: list[int] = []     # how many masked inputs the last WAL (before the unmask) named
        if not participants or (secure and len(participants) < 3):
            aborted = f"{len(participants)} of {len(cohort)} sampled holders took part: too few"
        elif cfg.aggregation.mode == "secagg":
            # federation.md §4.3: the key stages before training, over the participants; the holders expand their masks
            # while they train. A participant that then does not finish is a dropout of U2 \ U3.
            session = self._secure_session(r, participants, rp.encoded_dim, mhash, mode="secagg")
            try:
                participants = sorted(session.keys())     # U2: only they can send a masked input
            except SecAggAborted as e:
                aborted = str(e)
            clock.lap("secagg_keys")
        if aborted is None:
            self.channel.send(r, Stage.MODEL, {h: theta_bytes for h in participants})
            weights = self._weights(list(rp.participants))
            spec = round_spec(rp)
            plans = {h: encode(Plan(r, spec, weight=float(weights[h]))) for h in participants}
            for h, data in self.channel.exchange(r, Stage.PLAN, plans, deadline=dl.train, max_reply=MAX_CONTROL).items():
                msg = _decode(data, (Ready, Decision), h, r)
                if isinstance(msg, Ready):
                    ready[h] = self._claims_checked(r, h, msg)
                elif isinstance(msg, Decision):
                    refusals[str(h)] = msg.reason
                    rp.drop_reasons[h] = f"refused the plan: {msg.reason}"   # a dropout to the protocol, with its why
            clock.lap("train")
            try:
                # WAL (§6) before the sum can be revealed: a crash from then on completes this round's accounting
                # on restart (an audit killed the coordinator between the unmask and the old WAL: spend lost).
                # ckks+secagg: the CKKS part is revealed over A, the masked part over B ⊆ A
                def wal(surv, revealed=revealed):
                    revealed.update(surv)     # the last call is the masked stage's (B): the shares in the masked sum
                    masked_n[:] = [len(surv)]
                    self._checkpoint(in_flight=r, pending=pending_for(sorted(revealed), len(surv)))
                result = self._aggregate(r, rp, sorted(ready), weights, mhash, session, wal=wal)
            except SecAggAborted as e:   # below threshold: no masked sum revealed, the model stays as it was
                aborted = str(e)
            clock.lap("aggregate")
            dropped = result[3] if result else ()
        # θ sent (theta_bytes, held to the end of this call anyway), or the round aborted before it was: either way the
        # memo must not keep 4·P bytes alive until the next round's announcement
        withdraw_model()
        survivors = list(result[1]) if result else []
        # the charge (§4.1 step 6): every holder whose update entered a sum revealed to this process. Under ckks+secagg
        # that is A, not the masked survivors B ⊆ A: a holder of A \ B sent its CKKS part, decrypted into the model.
        # A round that aborts after the WAL (the CKKS part decrypted, or the unmask begun) is charged as the WAL
        # charged it, as the holders' own ledgers do: conservative, never "nothing was released" when something was
        charged = sorted(revealed | set(survivors))
        clipped = {h: ready[h].clipped for h in charged if ready[h].clipped is not None}
        pending = pending_for(charged, len(survivors) if result else (masked_n[0] if masked_n else None))
        if result is not None:   # its spend is already in the WAL (wal above, before the sum could be revealed)
            total, _, denominator, _ = result
            mean = _torch(total)             # this round's own array (decoded or summed here): divided in place
            self.outer.step(mean.div_(denominator) if total.flags.writeable else mean / denominator)
            clock.lap("outer")
        row.update({
            "clients_refused": len(refused), "clients_survived": len(survivors),
            # None where no holder reports one (record-level DP-SGD holders do not: their loss is not private)
            # each term divided first: the mean of claims near the float limit (a holder's 1e308) stays finite
            "train_loss": (math.fsum(x / len(losses) for x in losses)
                           if (losses := [ready[h].loss for h in ready if ready[h].loss is not None]) else None),
            "tokens_seen": (self._tokens_so_far()) + sum(ready[h].tokens for h in survivors),
            "bytes_up": self.channel.bytes_up, "bytes_down": self.channel.bytes_down,
            # exact only without DP: under DP it is data the guarantee does not cover (the ledger holds the noised one)
            "clip_fraction": (float(np.mean(list(clipped.values()))) if clipped and cfg.privacy.mode == "none" else None),
        })
        if refusals:
            row["refusals"] = refusals
        if dropped:   # shared keys, then sent no masked input: their pairwise masks were unmasked (secagg.md §8)
            row["secagg_dropped"] = list(dropped)
        if result is not None and len(charged) > len(survivors):   # ckks+secagg: in the CKKS part only, and charged
            row["ckks_only"] = [h for h in charged if h not in survivors]
        elif result is None and charged:   # aborted after a part of the sum could be revealed: charged all the same
            row["charged_though_aborted"] = charged
        if aborted:   # said once, with its reason, by the round's health warning below
            row["aborted"] = aborted
        record_eps = [ready[h].record_epsilon for h in ready if ready[h].record_epsilon is not None]
        if record_eps:   # record-level DP-SGD inside holders: the largest holder ε so far
            row["record_epsilon_max"] = max(record_eps)
        if r % fed.eval_every == 0 or r == fed.rounds:
            row.update(self.evaluate())
            clock.lap("evaluate")
        row["seconds"] = time.perf_counter() - t0
        row["stage_seconds"] = clock.laps
        if self._agg_laps:
            row["aggregate_seconds"] = self._agg_laps
        row["warnings"] = self.health.check(row)   # [] when all is well: the report knows they were checked
        if self._restart_warning:
            row["warnings"].append(self._restart_warning)
            self._restart_warning = None
        self.metrics.append(row)
        self.next_round = r + 1
        every = fed.checkpoint_every
        if result is not None and (r % every == 0 or r == fed.rounds or r == self.stop_after_round):
            self._save_model(r)
        self._checkpoint(pending=pending)          # WAL: the round's accounting is in the checkpoint first
        entry = rp.finish(survivors=charged, clip_infos={h: ClipInfo(0.0, bool(c)) for h, c in clipped.items()},
                          in_masked_sum=pending["n_masked"])
        self._privacy_fields(row, entry)   # (a restart before the checkpoint below fills them in _restore)
        self.log.append(row)
        self._checkpoint()
        self.channel.end_round(r)
        self._say(status_line(row, fed.rounds))
        for w in row["warnings"]:
            self._say(f"WARNING round {r}: {w}", warning=True)
        return row

    def _privacy_fields(self, row: dict, entry: dict) -> None:
        """The fields of a round's metrics row taken from its server ledger entry — everything the row gets after the
        write-ahead checkpoint that already holds the row."""
        row["epsilon"] = entry.get("epsilon")          # ∞ without DP ("inf" in the files): the truth, not a gap
        if entry.get("noisy_within_clip_fraction") is not None:   # adaptive clipping's released (noised) fraction
            row["noisy_clip_fraction"] = entry["noisy_within_clip_fraction"]
        if self.cfg.privacy.mode != "none":
            row["delta"] = entry.get("delta")

    def _fill_privacy_fields(self) -> None:
        """A restart completes a round's accounting from the checkpoint (``pending``), or finds it already appended;
        either way the checkpoint's row of that round was saved before its ε and δ were known. A crash review killed
        the coordinator in that window: the row stayed without them in metrics.jsonl for good. Each row without ε
        whose round has a server entry takes them from it (the latest, as run_round's own entry would be), as does
        the aborted row of a round that was in flight after its sum was revealed (charged, as in an uninterrupted
        run, whose aborted-but-charged rows carry their ε too)."""
        from securefed.privacy.ledger import decode_floats

        latest = {e.get("round"): e for e in self.privacy.ledger.entries}
        for row in self.metrics:
            entry = latest.get(row.get("round"))
            if entry is not None and "epsilon" not in row:
                self._privacy_fields(row, {k: decode_floats(v) for k, v in entry.items()})

    def _wall_seconds(self) -> float:
        """summary.json's wall_seconds: every phase (README: "all phases"). The rounds count across resumes (``wall``,
        kept in the checkpoint), or this process's rounds phase where that is longer; the other phases (start, data,
        export) are this process's. (A newcomer's walkthrough: a `securefed server` run said wall 269.5 s — its rounds
        alone — beside phases summing to 320.3 s; simulate adds its own phases and recomputes it.)"""
        phases = self.progress.phase_seconds
        return max(self.wall, phases.get("rounds", 0.0)) + sum(v for k, v in phases.items() if k != "rounds")

    def _tokens_so_far(self) -> int:
        for m in reversed(self.metrics):
            if "tokens_seen" in m:
                return int(m["tokens_seen"])
        return 0

    def _secure_session(self, r: int, cohort: list[int], length: int, mhash: str, *, mode: str) -> SecureSession:
        cfg = self.cfg
        transcript = self.rd.transcript / f"round-{r:05d}" if cfg.aggregation.transcript else None
        return SecureSession(self.channel, r, cohort, length=length, config=cfg.aggregation.secagg, roster=self.roster,
                             context=session_context(self.run_id, bytes.fromhex(mhash)), deadlines=self.opt.deadlines,
                             spool=self.rd.root / "spool", transcript=transcript, mode=mode)

    def _aggregate(self, r: int, rp, ready: list[int], weights: dict[int, float], mhash: str,
                   session: SecureSession | None = None, *, wal=lambda survivors: None):
        """(float32 sum over the survivors, survivors, denominator, secagg dropouts U2 \\ U3); SecAggAborted
        if it cannot be formed. ``session``: under ``secagg``, the session whose key stages ran before training.
        ``wal(survivors)`` is called before any part of the sum is revealed to this process (plain: once the
        updates are in, the earliest the survivors are known; CKKS: before the decryption shares are used)."""
        cfg, dl = self.cfg, self.opt.deadlines
        mode = cfg.aggregation.mode
        noise = self.entropy.for_party(r, SERVER_PARTY, "noise")
        dropped = ()
        if mode == "plain":
            total, survivors = plain_sum(self.channel, r, ready, dim=self.dim, clip=rp.clip_bound, deadlines=dl)
            if not survivors:
                raise SecAggAborted("no plain update arrived")
            wal(survivors)   # plain: each update is seen as it arrives; the spend is logged before it is noised
            total = rp.noise_plain_sum(total, noise)
        else:
            if session is None and len(ready) < 3:   # (a session's cohort had >= 3; its survivors need t_min, S7)
                raise SecAggAborted(f"only {len(ready)} holders finished training: secure aggregation needs 3")
            ckks_total, masked_cohort = None, ready
            if mode == "ckks+secagg":
                ckks_total, a = self.ckks.sum(self.channel, r, ready, dl, before_decrypt=wal, clip=float(rp.clip_bound))
                masked_cohort = list(a)   # CKKS first: a holder rejected there never enters the masked sum
                if len(masked_cohort) < 3:
                    raise SecAggAborted(f"only {len(masked_cohort)} CKKS uploads accepted: secure aggregation needs 3")
            if mode == "ckks+secagg":
                session = self._secure_session(r, masked_cohort, self.route_plan.secagg_size, mhash, mode=mode)
                session.keys()
            out = session.finish(masked_cohort, before_unmask=wal)
            survivors, dropped = out.survivors, out.dropped
            t_decode = time.perf_counter()
            if mode == "ckks+secagg":
                masked = dequantize_sum(out.total, rp.plan).astype(np.float64)
                if cfg.privacy.mode == "none" and list(survivors) != masked_cohort:
                    # the CKKS half sums over A, the masked half over B ⊆ A: rescale so each is the mean over its own
                    ckks_total = ckks_total * (sum(weights[h] for h in survivors) / sum(weights[h] for h in masked_cohort))
                total = rp.noise_plain_sum(self.route_plan.merge(ckks_total, masked).astype(np.float32), noise)
            else:
                total = rp.decode(out.total, survivors=list(survivors), entropy=noise)
            self._agg_laps = {**session.laps, "decode": round(time.perf_counter() - t_decode, 4)}
        # DP: a fixed denominator (the planned cohort) bounds one holder's influence by C / cohort
        denominator = (float(self.cfg.federation.cohort_size) if cfg.privacy.mode != "none"
                       else float(sum(weights[h] for h in survivors)) or 1.0)
        return np.asarray(total, dtype=np.float32), survivors, denominator, dropped

    def evaluate(self) -> dict:
        from securefed.training.flat import set_flat

        if self.data.eval_rows is None:
            return {}
        set_flat(self.evaluator.raw_model, self.outer.params)
        loss = self.evaluator.evaluate(self.data.eval_rows)
        # a DP-wrecked model must not crash: beyond float range the perplexity is ∞ ("inf" in the files), not e^700
        return {"eval_loss": loss, "eval_ppl": math.exp(loss) if loss < 700.0 else math.inf}

    # ------------------------------------------------------------------ the end of the run
    def _simulated_own_ledgers(self) -> dict[int, Path]:
        """The own ledgers of the roster's holders whose state this run directory keeps (a simulation's
        holders/<id>/holder.yaml, whatever the backend), which the end record closes (dp.md §7.4); {} for a
        deployment, whose holders keep their ledgers at their own sites."""
        base = self.rd.root / "holders"
        return {h: base / str(h) / "ledger.jsonl" for h in sorted(self.roster.keys)
                if (base / str(h) / "holder.yaml").is_file()}

    def finish(self) -> dict:
        """Run-directory contract: model/ (with its SHA-256), summary.json (the report is the caller's)."""
        from securefed.privacy.holder_ledger import RECORD_RELATION, signed_record_units
        from securefed.runtime.export import export_model
        from securefed.training.flat import set_flat

        with self.progress.phase("export", label="exporting the model"):
            set_flat(self.evaluator.raw_model, self.outer.params)
            export_model(self.evaluator.raw_model, self.data.tokenizer, self.rd.model)
        done = [m for m in self.metrics if not m.get("aborted")]
        evals = [m for m in self.metrics if "eval_ppl" in m]
        model_sha = file_sha256(self.rd.model / "model.safetensors")
        # the signed end-of-run record (protocols/dp.md §7.4): no more entries follow; the ε is this model's
        self.privacy.close_run(model_sha256=model_sha, own_ledgers=self._simulated_own_ledgers())
        eps, delta = self.privacy.epsilon_spent()
        summary = {
            "fed_eval_ppl": evals[-1]["eval_ppl"] if evals else None,
            "rounds": len(done), "rounds_aborted": len(self.metrics) - len(done),
            "tokens": self._tokens_so_far(), "epsilon": eps, "wall_seconds": self._wall_seconds(),
            "aggregation": self.cfg.aggregation.mode, "model_params": self.dim, "model_preset": self.cfg.model.preset,
            "unigram_eval_ppl": self.data.unigram_eval_ppl, "privacy_mode": self.cfg.privacy.mode,
            "run_id": self.run_id.hex(), "deployment": self.opt.deployment, "backend": self.opt.backend,
            "holders": self.cfg.federation.n_holders, "model_sha256": model_sha,
            "init_from": self.cfg.model.init_from, "init_sha256": self.init_sha256,
            "model_restarts": self.model_restarts, "resumes": self.resumes,
            "ledger_head": self.privacy.ledger.head, "ledger_entries": len(self.privacy.ledger.entries),
            "start_eval_ppl": self.start_ppl,
            "phase_seconds": dict(self.progress.phase_seconds),
            "ended": getattr(self, "ended", "finished"),
        }
        # what `epsilon` protects, never left to the reader (protocols/dp.md §1–2): one holder's whole contribution,
        # between the two runs its relation names; "inf" with privacy_mode none means no holder-level guarantee
        summary["epsilon_unit"] = "holder"
        if self.cfg.privacy.mode != "none":   # δ means nothing without DP: not reported
            summary["delta"] = delta
            summary["neighbouring_relation"] = self.privacy.neighbouring
        rec = [m["record_epsilon_max"] for m in self.metrics if m.get("record_epsilon_max") is not None]
        if rec:   # as the holders reported it; `securefed verify` recomputes each from its signed releases
            summary["record_epsilon_reported_max"] = max(rec)
            summary["record_delta"] = self.cfg.train.dp_sgd.delta
            # one record of one holder (dp.md §10.2): a training sequence, a document or a group, as the holders'
            # own signed releases name it — never config.yaml's train.dp_sgd.unit, which is the coordinator's (each
            # holder's own holder.yaml decides; PV-55). A deployment's coordinator reads no holder's ledger: no unit
            # is stated, and `securefed verify --holder-ledger` gives each. Poisson-sampled DP-SGD's RDP is for
            # adding or removing that one record (§10)
            unit = signed_record_units(self._simulated_own_ledgers())
            if unit is not None:
                summary["record_unit"] = unit
            summary["record_neighbouring_relation"] = RECORD_RELATION
        short = update_shortfall(self.metrics, self.cfg.federation.rounds)
        if short:   # never quietly: a run whose rounds did not all move the model says so at its end (the report too)
            summary["warnings"] = [short]
            self._say(f"WARNING: {short}", warning=True)
        self.rd.write_json(self.rd.summary, summary)
        return summary


class _Clock:
    """Seconds per phase of a round (prepare, offer, train = θ out + local training + PLAN, aggregate, outer, evaluate)."""

    def __init__(self) -> None:
        self.t, self.laps = time.perf_counter(), {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self.t, 4)
        self.t = now


def _load_checkpoint(path) -> dict:
    """A checkpoint file of this run (weights_only: never runs code, SYS-13), or StateError naming it: a truncated,
    corrupt or missing one was a torch traceback (exit 1) or an 'Errno 2' usage error on --resume (the crash review)."""
    import torch

    try:
        st = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise StateError(f"{path} is missing, but the run's checkpoint needs it: restore it from a backup (the "
                         "privacy ledgers hold the spend; a new --out starts the run afresh)") from None
    except Exception as e:  # noqa: BLE001 - any unreadable checkpoint: one error naming it
        raise StateError(f"{path} cannot be read ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}"
                         "): restore it from a backup (the privacy ledgers hold the spend; a new --out starts the run "
                         "afresh)") from None
    if not isinstance(st, dict):
        raise StateError(f"{path} is not a checkpoint of this run: restore it from a backup")
    return st


def _decode(data: bytes, kinds, h: int, r: int):
    """A holder's reply of the expected kind, for this round, from this holder; None (logged) otherwise."""
    try:
        msg = decode(data)
    except MessageError as e:
        log.warning("round %d: holder %d sent a malformed reply: %s", r, h, e)
        return None
    if not isinstance(msg, kinds) or msg.round != r or msg.holder_id != h:
        log.warning("round %d: holder %d's reply is of the wrong kind, round or sender", r, h)
        return None
    return msg


def _torch(x: np.ndarray):
    import torch

    return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))


def status_line(row: dict, rounds: int) -> str:
    eps = as_number(row.get("epsilon"))
    ppl = "" if row.get("eval_ppl") is None else f" eval_ppl {format_ppl(row['eval_ppl'], row.get('eval_loss'))}"
    dp = (eps is not None and math.isfinite(eps)) or row.get("record_epsilon_max") is not None
    loss = f"{row['train_loss']:.3f}" if row.get("train_loss") is not None else "not sent (DP)" if dp else "n/a"
    extra = f" (+{len(row['ckks_only'])} in the CKKS part only)" if row.get("ckks_only") else ""
    priv = f", epsilon {epsilon_text(eps)}" if eps is not None and math.isfinite(eps) else ""
    return (f"round {row['round']}/{rounds}: {row['clients_survived']}/{row['clients_sampled']} holders{extra}, "
            f"train_loss {loss}{ppl}{priv}, up {row['bytes_up'] / 1e6:.2f} MB, {row['seconds']:.1f}s")
