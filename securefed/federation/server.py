"""The coordinator of a networked federation: the Coordinator role over the gRPC channel (`securefed server`)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

from securefed import jsonio
from securefed.federation.coordinator import Coordinator, CoordinatorOptions, StateError, privacy_preflight
from securefed.federation.grpc import EXIT, GrpcChannel
from securefed.federation.stages import Deadlines
from securefed.privacy.ledger import LedgerWriteError
from securefed.runtime.rundir import DirectoryInUse, RunDir, WriteError, hold_exclusive, unreported

__all__ = ["serve"]

log = logging.getLogger("securefed.server")


def serve(cfg, *, pki: str | Path, out: str | Path, host: str = "127.0.0.1", port: int = 0, resume: bool = False,
          launched: bool = False, stop_after_round: int | None = None) -> int:
    """Run the whole federation as its coordinator; an exit code (protocols/transport.md §10)."""
    from securefed.federation.data import coordinator_data
    from securefed.secagg import Roster, RosterError
    from securefed.training.data import DataError
    from securefed.runtime.progress import Progress
    from securefed.training.models import parameter_count
    from securefed.transport.pki import Layout, TlsFilesError, check_tls_files, load_identity
    from securefed.transport.service import listen_problem

    def usage(msg: str) -> int:
        print(f"securefed server: {msg}", file=sys.stderr)
        return EXIT["usage"]

    if resume and not launched and unreported(out):   # (launched: simulate writes the report, after its baseline)
        return _complete(RunDir(out))

    lay = Layout(pki)
    for f in (lay.roster, lay.ca_cert, lay.server_cert, lay.server_key, lay.server_identity):
        if not f.is_file():
            return usage(f"missing key file {f} (create the PKI with `securefed keygen`)")
    try:
        roster = Roster.load(lay.roster)
    except (RosterError, ValueError) as e:
        return usage(f"roster {lay.roster}: {e}")
    try:   # a certificate the holders cannot verify would read to each of them as "no answer" (transport.md §7.1)
        for w in check_tls_files(cert=lay.server_cert, key=lay.server_key, ca=lay.ca_cert):
            log.warning("%s", w)
    except (TlsFilesError, OSError) as e:
        return usage(str(e))
    if len(roster.keys) != cfg.federation.n_holders:
        return usage(f"the roster lists {len(roster.keys)} holders but federation.n_holders is {cfg.federation.n_holders}: "
                     f"--set federation.n_holders={len(roster.keys)}, or make the PKI for {cfg.federation.n_holders} "
                     f"holders (securefed keygen DIR --holders {cfg.federation.n_holders})")
    if not 0 <= port <= 65535:
        return usage(f"--port must be in [0, 65535], got {port}")
    # port 0 too: the system picks a free port, but the host must still be one of this machine's (a --host not of
    # this machine with --port 0 failed only at gRPC's bind, after the run directory and first checkpoint were written)
    why = listen_problem(host, port)
    if why:
        return usage(f"cannot listen on {host}:{port}: {why}; " + (
            "stop what holds the port or choose another --port (0 picks a free one and writes it to "
            "RUN_DIR/status.json)" if port else "--host must be an address of this machine (0.0.0.0 for all)"))
    rd = RunDir(out)
    if resume and not rd.checkpoint_file.exists():
        return usage(f"--resume: no checkpoint at {rd.checkpoint_file}")
    try:
        identity = load_identity(lay.server_identity)   # signs the privacy ledgers
        data = coordinator_data(cfg, progress=False)    # the public tokenizer and the evaluation split
        dim = parameter_count(cfg.model.preset, vocab_size=len(data.tokenizer), seq_len=cfg.data.seq_len)
        pf = privacy_preflight(cfg, dim=dim, records=None,   # a holder checks its own record-level δ
                               resumed_ledgers=rd.privacy if resume else None)
        if launched:
            rd.root.mkdir(parents=True, exist_ok=True)
            rd.privacy.mkdir(exist_ok=True)
            rd.checkpoints.mkdir(exist_ok=True)
        else:
            rd.create(resume=resume)
    except (DataError, FileExistsError, OSError, ValueError) as e:   # (PermissionError, WriteError: OSErrors)
        return usage(str(e))
    net = cfg.network
    secure = cfg.aggregation.mode != "plain"
    cohort = cfg.federation.cohort_size
    min_holders = net.min_holders or (cfg.aggregation.secagg.thresholds(cohort).min_survivors if secure and cohort >= 3 else 1)
    progress = Progress(enabled=True)
    channel = GrpcChannel(pki=lay.root, roster=roster, host=host, port=port, chunk_size=int(net.chunk_mib * (1 << 20)),
                          status_path=rd.root / "status.json", alive_s=net.alive_s, progress=progress)
    options = CoordinatorOptions(deadlines=Deadlines.from_config(net), min_holders=min_holders,
                                 max_aborted_rounds=net.max_aborted_rounds, deployment="network", backend="grpc")
    try:
        coord = Coordinator(cfg, channel, rd, data=data, roster=roster, identity=identity, options=options,
                            resume=resume, stop_after_round=stop_after_round, preflight=pf, progress=progress)
        summary = coord.run()
    except StateError as e:
        print(f"securefed server: {e}", file=sys.stderr)
        return EXIT["state"]
    except (WriteError, LedgerWriteError) as e:
        # the run directory cannot be written (disk full, read-only): every file is whole, as of its last write, and
        # --resume completes or aborts the round in flight (federation.md §6); never a traceback, never exit 2
        from securefed.runtime.rundir import resume_hint

        print(f"securefed server: stopped: {e}. Once {rd.root} can be written, "
              f"{resume_hint(rd.root, 'with the same arguments and --resume')}", file=sys.stderr)
        return EXIT["state"]
    except OSError as e:
        return usage(str(e))
    finally:
        channel.close()
    rc = EXIT["too_few"] if getattr(coord, "exit_reason", None) == "too_few" else EXIT["ok"]
    if "stopped_after_round" not in summary and not launched:
        _write_report(rd)
    print(jsonio.dumps(summary), flush=True)
    return rc


def _write_report(rd: RunDir) -> None:
    """The report of a finished run (one line where it cannot be written: the run is whole), then the line saying
    where the run and its report are — on stderr: stdout is the summary's JSON alone."""
    from securefed.report.render import render_run_report, where_line

    print(f"securefed server: {where_line(rd.root, render_run_report(rd.root, command='server'))}", file=sys.stderr)


def _complete(rd: RunDir) -> int:
    """--resume of a run that finished its rounds but stopped before its report (rundir.unreported: killed after
    summary.json): write the report and mark status.json ended — nothing else, the export, signed end-of-run record
    and summary stand. A crash review: --resume refused such a run as finished though its hint said --resume, and
    the report was never written. Holders still asking learn nothing from this process: after the last round they
    stop by themselves; after an early end (too few, the budget) they retry, then exit 6 (transport.md §5.4)."""
    try:
        hold_exclusive(rd.root, "the run directory")
    except DirectoryInUse as e:
        print(f"securefed server: {e}", file=sys.stderr)
        return EXIT["state"]
    try:
        summary = jsonio.read_json(rd.summary, legacy=True)
    except (OSError, jsonio.JSONFileError) as e:   # (unreported read it a moment ago)
        print(f"securefed server: {rd.summary} cannot be read: {e}", file=sys.stderr)
        return EXIT["state"]
    summary = summary if isinstance(summary, dict) else {}
    log.warning("%s finished its rounds before the server stopped: writing its report", rd.root)
    _mark_ended(rd, summary)
    _write_report(rd)
    print(jsonio.dumps(summary), flush=True)
    return EXIT["too_few"] if summary.get("ended") == "too_few" else EXIT["ok"]


def _mark_ended(rd: RunDir, summary: dict) -> None:
    """status.json as GrpcChannel.end_run leaves it (board.ended), so `--status` says the run ended rather than NOT
    RUNNING with a --resume to do."""
    from securefed.runtime.rundir import atomic_write_text

    path = rd.root / "status.json"
    try:
        status = jsonio.read_json(path)
        rows = RunDir.read_jsonl(rd.metrics) if rd.metrics.is_file() else []
    except (OSError, jsonio.JSONFileError):
        return   # none (or unreadable): --status says there is no status, as before
    board = status.get("board") if isinstance(status, dict) else None
    if not isinstance(board, dict) or board.get("ended"):
        return
    last = max((r["round"] for r in rows if isinstance(r.get("round"), int)), default=0)
    board["ended"] = {"reason": "ended", "why": summary.get("ended", "finished"), "after_round": last}
    status["updated"] = time.time()
    try:
        atomic_write_text(path, jsonio.dumps(status) + "\n")
    except WriteError as e:
        log.warning("%s", e)
