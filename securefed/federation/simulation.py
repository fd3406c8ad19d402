"""`securefed simulate`: one whole federation on this machine, through a chosen channel.

    prepare data (public tokenizer; the coordinator's evaluation split)       before RUN_DIR exists
    RUN_DIR/pki            a fresh demo PKI for this run (make_demo_pki): the CA, the coordinator's TLS and
                           ledger-signing keys, every holder's TLS and identity keys, their certificates, the roster.
                           Its private keys live only while the run can still be resumed: once summary.json is final
                           they are removed; certificates, roster and privacy/keys.json stay for `securefed verify`
                           (Simulation._remove_private_keys, protocols/federation.md §6)
    RUN_DIR/holders/<id>/  each holder's own config (holder.yaml) and state: its ledger, optimizer state
    backend inproc: the holders live in this process (InProcChannel)
    backend grpc:   `securefed server` and one `securefed client` per holder as separate processes on
                    loopback with mutual TLS — the deployment code path, byte for byte
    backend ray:    one Ray actor per holder (local Ray, or a cluster), the coordinator here (ray_cluster.py)
    the Coordinator runs the rounds (federation/coordinator.py) → model/, metrics.jsonl, summary.json
    centralized baseline at equal tokens (baseline/metrics.jsonl) → summary.json; report/
    --resume of a run stopped between its summary.json and its report: the report only (Simulation._complete);
    --resume of a complete run is refused (rundir.check_out_dir), as `securefed simulate --resume` refuses it

Every backend runs the same Coordinator and Holder code; a run with seeded test entropy gives the same
model hash and ledger on each (tests/federation/test_conformance.py).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

from securefed.configio import dump_yaml
from securefed.federation.coordinator import Coordinator, CoordinatorOptions
from securefed.federation.holder_config import CkksFloor, HolderConfig, HolderHardware, HolderPolicy
from securefed.runtime.progress import Progress
from securefed.runtime.rundir import RunDir, atomic_write_text, unreported

__all__ = ["Simulation", "run_simulation", "holder_configs"]

log = logging.getLogger("securefed.simulate")


def holder_configs(cfg, run_dir: Path, *, server: str = "127.0.0.1:50051",
                   torch_threads: int | None = None, mask_threads: int | None = None) -> dict[int, HolderConfig]:
    """What each simulated holder runs with: shard i of the run's corpus, floors equal to the run's settings.
    ``mask_threads`` (secure aggregation's expansion and rounding threads, per holder process): default
    (cores − 2) / n_holders, the holders' processes sharing this machine's cores."""
    agg, fed, priv = cfg.aggregation, cfg.federation, cfg.privacy
    sa, ck = agg.secagg, agg.ckks
    graph = "complete" if sa.neighbours is None else "auto" if sa.neighbours == 0 else sa.neighbours
    policy = HolderPolicy(aggregation=(agg.mode,), min_ring_bits=sa.ring_bits, min_threshold_fraction=sa.threshold_fraction,
                          graph=graph, min_cohort=1 if agg.mode == "plain" else 3, privacy_mode=priv.mode,
                          epsilon_cap=priv.holder_epsilon_cap, delta=priv.delta,   # the δ the user set, if any
                          ckks=CkksFloor(min_survivors=ck.min_survivors, verify_aggregate=ck.verify_aggregate,
                                         min_flood_bits=ck.decrypt_flood_bits, key_scope=ck.key_scope,
                                         max_tensor_elements=None if ck.include else ck.max_elements,
                                         max_key_rounds=ck.rotate_key_every_rounds))
    t = cfg.train
    hw = HolderHardware(accelerator=t.accelerator, devices=t.devices, precision=t.precision, strategy=t.strategy,
                        compile=t.compile, torch_threads=torch_threads, encode_on=t.encode_on,
                        mask_threads=mask_threads or max(1, ((os.cpu_count() or 2) - 2) // max(1, fed.n_holders)))
    out = {}
    for i in range(fed.n_holders):
        h = i + 1   # holder ids are Shamir x-coordinates: >= 1
        out[h] = HolderConfig(holder_id=h, state_dir=str(run_dir / "holders" / str(h)), data=cfg.data, shard=i,
                              n_shards=fed.n_holders, data_seed=cfg.seed, policy=policy, dp_sgd=t.dp_sgd, hardware=hw,
                              server=server, pki=str(run_dir / "pki"), deterministic_secrets=cfg.deterministic_secrets,
                              secret_seed=cfg.seed, dropout_rate=fed.dropout_rate, save_every=fed.checkpoint_every)
    return out


class Simulation:
    def __init__(self, cfg, out: str | Path, *, resume: bool = False, progress: bool = True,
                 stop_after_round: int | None = None, backend: str = "inproc",
                 threads_per_holder: int | None = None, holder_overrides: dict | None = None,
                 ray_options=None) -> None:
        """``holder_overrides``: {holder id: {HolderConfig field: value}} — a holder's own settings that
        differ from the run's (its ε cap, floors, or test hooks such as vanish_at). ``ray_options``:
        ray_cluster.RayOptions for backend ray (where holders run and with what resources)."""
        from securefed.federation.data import coordinator_data

        if backend not in ("inproc", "grpc", "ray"):
            raise ValueError(f"unknown backend {backend!r}: choose inproc, grpc or ray")
        if cfg.train.devices > 1:
            # Fabric's launcher re-runs this process once per extra device: a holder on several GPUs needs its
            # rank 0 to talk to the coordinator and drive worker ranks, which the Holder does not do yet
            raise ValueError(f"train.devices={cfg.train.devices}: a holder on several GPUs (strategy "
                             f"{cfg.train.strategy}) is not yet part of a federation run; it trains and is "
                             "measured by benchmarks/gpu/fsdp.py (README: Holders bigger than one GPU)")
        if backend == "ray":   # GPUs asked per holder vs what its trainer uses: refused before any data work
            from securefed.federation.ray_cluster import RayOptions, check_placement

            check_placement(cfg.train, (ray_options or RayOptions()).gpus_per_holder)
        self.cfg, self.resume, self.stop_after_round, self.backend = cfg, resume, stop_after_round, backend
        self.threads, self.holder_overrides = threads_per_holder, holder_overrides or {}
        self.progress = Progress(enabled=progress)
        if cfg.aggregation.mode == "plain":   # said once, plainly (warnings.warn printed a source path and a code line)
            msg = "aggregation.mode=plain: the coordinator sees every holder's clipped update (a baseline, not secure)"
            if self.progress.enabled:
                self.progress.print(f"[yellow]WARNING: {msg}[/]")
            else:
                print(f"WARNING: {msg}", file=sys.stderr)
        self.rd = RunDir(out)
        if resume and not self.rd.checkpoint_file.exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {self.rd.checkpoint_file}")
        if resume:   # a complete run (its private keys removed) is refused here too, not only by the CLI: RunDirError
            from securefed.runtime.rundir import check_out_dir

            check_out_dir(self.rd.root, resume=True, runs_baseline=bool(cfg.baseline))
        # the rounds, export, end record and summary are done; only the report is missing: nothing to prepare
        self.report_only = resume and unreported(self.rd.root, runs_baseline=bool(cfg.baseline))
        self.report_written = False   # (_report: True once this run's report is written)
        if self.report_only:
            return
        # everything that can fail on bad input happens before the run directory is touched
        with self.progress.phase("data", label="preparing the data"):
            self.data = coordinator_data(cfg, progress=self.progress)
        from securefed.federation.coordinator import privacy_preflight
        from securefed.training.models import parameter_count

        dim = parameter_count(cfg.model.preset, vocab_size=len(self.data.tokenizer), seq_len=cfg.data.seq_len)
        from securefed.federation.data import eval_split_for, federated_data, record_counts

        fd = federated_data(cfg.data, n_holders=cfg.federation.n_holders, seed=cfg.seed, progress=self.progress,
                            eval_split=eval_split_for(cfg.train.dp_sgd, cfg.data))
        sizes, units = record_counts(fd, n_holders=cfg.federation.n_holders, dp_sgd=cfg.train.dp_sgd,
                                     seq_len=cfg.data.seq_len)
        # every holder at its own batch, local steps and records; δ ≤ 1/records at the largest
        self.preflight = privacy_preflight(cfg, dim=dim, records=sizes, documents=units,   # refused here
                                           resumed_ledgers=self.rd.privacy if resume else None)
        self.ray = None
        if backend == "ray":   # an unreachable cluster or unmet resources: one error, no run directory
            from securefed.federation.ray_cluster import RayOptions, connect

            self.ray = connect(ray_options or RayOptions(), n_holders=cfg.federation.n_holders, train=cfg.train)
        self.rd.create(resume=resume)

    def _pki(self):
        from securefed.secagg import Roster
        from securefed.transport.pki import Layout, make_demo_pki

        lay = Layout(self.rd.root / "pki")
        if not self.resume or not lay.roster.exists():
            make_demo_pki(lay.root, holders=self.cfg.federation.n_holders)
        elif missing := [p for p in lay.private_files() if not p.is_file()]:
            # a run past its summary.json has none (its resume writes the report only, or is refused in __init__);
            # here they were deleted by hand: one error (exit 4), not load_identity's traceback
            from securefed.federation.coordinator import StateError

            raise StateError(f"--resume: {len(missing)} private keys of this run are missing from {lay.root} (first "
                             f"{missing[0]}): the run cannot go on with its own keys; start it again with a new --out")
        return lay, Roster.load(lay.roster)

    def _write_holder_configs(self, configs: dict[int, HolderConfig]) -> None:
        for h, hc in configs.items():
            d = Path(hc.state_dir)
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
            atomic_write_text(d / "holder.yaml", dump_yaml(hc))

    def run(self) -> dict:
        if self.report_only:
            return self._complete()
        lay, roster = self._pki()
        # in-process holders share one pool of (cores − 2) threads (holder.py: one pool per size per process)
        shared = max(1, (os.cpu_count() or 2) - 2) if self.backend == "inproc" else None
        configs = holder_configs(self.cfg, self.rd.root, torch_threads=self.threads, mask_threads=shared)
        for h, fields in self.holder_overrides.items():
            configs[h] = _override(configs[h], fields)
        self._write_holder_configs(configs)
        if self.backend == "inproc":
            summary = self._run_inproc(lay, roster, configs)
        elif self.backend == "ray":
            from securefed.federation.ray_cluster import run_ray

            from securefed.transport.pki import load_identity

            summary = run_ray(self.cfg, self.rd, configs, session=self.ray, data=self.data, roster=roster,
                              identity=load_identity(lay.server_identity), progress=self.progress, resume=self.resume,
                              stop_after_round=self.stop_after_round, preflight=self.preflight)
        else:
            from securefed.federation.launch import run_grpc

            with self.progress.phase("rounds", label="coordinator and holder processes"):
                summary = run_grpc(self.cfg, self.rd, configs, progress=self.progress,
                                   stop_after_round=self.stop_after_round, resume=self.resume)
        if "stopped_after_round" in summary:
            return summary
        return self._finish(summary)

    def _run_inproc(self, lay, roster, configs) -> dict:
        from securefed.federation.holder import Holder
        from securefed.federation.inproc import InProcChannel
        from securefed.transport.pki import load_identity

        if self.threads:   # one process: its holders train one after another with this many threads
            import torch

            torch.set_num_threads(self.threads)
        holders = {h: Holder(hc, identity=load_identity(lay.holder_identity(h)), roster=roster)
                   for h, hc in configs.items()}
        channel = InProcChannel(holders, progress=self.progress)
        coord = Coordinator(self.cfg, channel, self.rd, data=self.data, roster=roster,
                            identity=load_identity(lay.server_identity), options=CoordinatorOptions(backend="inproc"),
                            progress=self.progress, resume=self.resume, stop_after_round=self.stop_after_round,
                            preflight=self.preflight)
        return coord.run()

    def _finish(self, summary: dict) -> dict:
        """The centralized baseline at the federation's evaluation points, then summary.json and the report."""
        from securefed.runtime.baseline import baseline_lr_and_batch, run_centralized_baseline

        rd = self.rd
        metrics = RunDir.read_jsonl(rd.metrics)
        if self.cfg.baseline and metrics:
            from securefed.federation.data import eval_split_for, federated_data

            fd = federated_data(self.cfg.data, n_holders=self.cfg.federation.n_holders, seed=self.cfg.seed,
                                progress=False, eval_split=eval_split_for(self.cfg.train.dp_sgd, self.cfg.data))
            points = [m["tokens_seen"] for m in metrics if "eval_ppl" in m]
            curve = run_centralized_baseline(self.cfg, fd, points, progress=self.progress)   # its own phase
            rd.write_jsonl(rd.baseline / "metrics.jsonl", curve)
            summary["central_eval_ppl"] = curve[-1]["eval_ppl"] if curve else None
            summary["central_lr"], summary["central_batch_size"] = baseline_lr_and_batch(self.cfg)
            if summary["central_eval_ppl"] and summary["fed_eval_ppl"]:
                summary["fed_over_central_ppl"] = summary["fed_eval_ppl"] / summary["central_eval_ppl"]

        self._write_summary(summary)
        return self._report(summary)

    def _write_summary(self, summary: dict) -> None:
        """summary.json with this process's phases added (the coordinator's, grpc: another process's, kept)."""
        summary["phase_seconds"] = {**summary.get("phase_seconds", {}), **self.progress.phase_seconds}
        summary["wall_seconds"] = sum(summary["phase_seconds"].values())
        self.rd.write_json(self.rd.summary, summary)

    def _report(self, summary: dict) -> dict:
        """The last step, after summary.json: the private keys go, then the report (one line, not a traceback, where it
        cannot be written: the run itself is whole), then summary.json again with the report's time."""
        from securefed.report.render import render_run_report

        self._remove_private_keys()
        self._remove_holder_optimizer_state()
        with self.progress.phase("report", label="rendering the report"):
            self.report_written = render_run_report(self.rd.root, command="simulate")
        self._write_summary(summary)
        return summary

    def _complete(self) -> dict:
        """--resume of a run that finished its rounds (summary.json, with the baseline's result where it runs one) but
        stopped before its report (rundir.unreported): write the report, nothing else — its export, signed end-of-run
        record and summary stand (resuming the coordinator would redo them). A crash review stopped runs right after
        summary.json: the hint said --resume, --resume refused the run as finished, and the report was never written."""
        from securefed import jsonio
        from securefed.federation.coordinator import StateError
        from securefed.runtime.rundir import DirectoryInUse, hold_exclusive

        try:   # one process per run directory (federation.md §6), as for a resume of its rounds
            hold_exclusive(self.rd.root, "the run directory")
        except DirectoryInUse as e:
            raise StateError(str(e)) from None
        try:
            summary = jsonio.read_json(self.rd.summary, legacy=True)
        except (OSError, jsonio.JSONFileError) as e:   # (unreported read it a moment ago)
            raise StateError(f"{self.rd.summary} cannot be read: {e}") from None
        if not isinstance(summary, dict):
            raise StateError(f"{self.rd.summary} does not hold a JSON object")
        self._say(f"{self.rd.root} finished its rounds before it stopped: writing its report (its model and ledgers "
                  "stand)")
        return self._report(summary)

    def _remove_private_keys(self) -> None:
        """protocols/federation.md §6 (the end of a run; threat SYS-34). Once summary.json is final nothing reads a
        private key of RUN_DIR/pki: a --resume writes the report only (_complete), and `securefed report`, `verify` and
        `verify --holder-ledger` read the roster, certificates and privacy/keys.json. So every private key make_demo_pki
        generated there for this run (Layout.private_files: the CA key, the coordinator's TLS and ledger-signing keys,
        each holder's TLS and identity keys) is unlinked — before the report, which then does not note keys that are
        gone. A run stopped before (stop_after_round, a crash, an interrupt, its baseline unfinished) keeps them for
        its --resume. Only RUN_DIR/pki, which this command made: a `securefed server` / `client` --pki is its user's.
        One line says they were removed, or which could not be (never that they are gone when they are not)."""
        from securefed.transport.pki import Layout

        lay = Layout(self.rd.root / "pki")
        removed, left = _unlink_each(lay.private_files())
        if left:
            self._say(f"WARNING: {len(left)} private key(s) of this complete run could not be removed: "
                      f"{', '.join(left)}; delete them: whoever has the run directory could re-sign its ledgers")
        elif removed:
            self._say(f"removed the {removed} private keys this run generated in {lay.root} (CA, coordinator and "
                      "holders' TLS and signing keys: nothing needs them now the run is complete); its certificates, "
                      "roster and public keys stay for `securefed verify`")

    def _remove_holder_optimizer_state(self) -> None:
        """protocols/federation.md §6 (threat SYS-35): each simulated holder's trainer.pt (RUN_DIR/holders/<id>/) holds
        its AdamW moments — running averages of the gradients of that holder's own data alone, the per-holder
        information secure aggregation exists to hide from everyone but the holder (asset A2) — and only a restart of
        that holder reads it. Once summary.json is final no holder restarts (a --resume writes the report only, or is
        refused), so it goes with the keys. The holder's ledger, holder.yaml and holder_state.json stay (`verify
        --holder-ledger` reads the ledger). A deployed holder's state directory is its own and never touched here."""
        removed, left = _unlink_each(sorted((self.rd.root / "holders").glob("*/trainer.pt")))
        if left:
            self._say(f"WARNING: {len(left)} holder optimizer state file(s) of this complete run could not be removed: "
                      f"{', '.join(left)}; delete them: each holds moments of one holder's own gradients")
        elif removed:
            self._say(f"removed the {removed} holders' optimizer states (holders/<id>/trainer.pt: moments of each "
                      "holder's own gradients, which no holder needs now the run is complete)")

    def _say(self, msg: str) -> None:
        """One line for the user: on the progress display, or on stderr when it is off (--quiet)."""
        if self.progress.enabled:
            self.progress.print(msg)
        else:
            print(f"securefed simulate: {msg}", file=sys.stderr)


def _unlink_each(paths) -> tuple[int, list[str]]:
    """Unlink each path: (how many were removed, "path (why)" for each that could not be). One already gone (removed
    at this run's end already, its report then not written) is neither."""
    removed, left = 0, []
    for p in paths:
        try:
            p.unlink()
            removed += 1
        except FileNotFoundError:
            pass
        except OSError as e:
            left.append(f"{p} ({e.strerror or type(e).__name__})")
    return removed, left


def _override(hc: HolderConfig, fields: dict) -> HolderConfig:
    from dataclasses import replace

    from securefed.configio import from_dict, to_dict

    data = to_dict(hc)
    for k, v in fields.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return replace(from_dict(HolderConfig, data))


def run_simulation(cfg, out: str | Path, **kw) -> dict:
    return Simulation(cfg, out, **kw).run()
