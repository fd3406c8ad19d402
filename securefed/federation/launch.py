"""`securefed simulate --backend grpc`: the deployment code path on one machine.

The coordinator (`securefed server`) and every holder (`securefed client --config holders/<id>/holder.yaml`)
run as separate processes on loopback, with the fresh mutual-TLS keys in RUN_DIR/pki. This process
only starts them, shows their progress from RUN_DIR/metrics.jsonl, and collects their exit codes. It
owns them: however it ends (an error, Ctrl-C, SIGTERM, SIGHUP), their process groups are killed with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from securefed import jsonio
from securefed.configio import dump_yaml
from securefed.runtime.rundir import RunDir, atomic_write_text

__all__ = ["run_grpc", "LaunchError", "signals_raise"]

log = logging.getLogger("securefed.launch")


class LaunchError(RuntimeError):
    """A process of the local federation failed; the message names it and ends with its log."""


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "securefed.cli", *args]


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def run_grpc(cfg, rd: RunDir, configs: dict, *, progress, stop_after_round: int | None = None,
             resume: bool = False, start_timeout: float = 120.0) -> dict:
    launch = rd.root / "launch"
    launch.mkdir(exist_ok=True)
    run_yaml = launch / "run.yaml"
    atomic_write_text(run_yaml, dump_yaml(cfg))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    status = rd.root / "status.json"
    status.unlink(missing_ok=True)
    args = ["server", "--pki", str(rd.root / "pki"), "--out", str(rd.root), "--preset", "", "--config", str(run_yaml),
            "--port", "0", "--launched"]
    if resume:
        args.append("--resume")
    if stop_after_round is not None:
        args += ["--stop-after-round", str(stop_after_round)]
    procs: dict[str, subprocess.Popen] = {}
    logs: dict[str, Path] = {}

    def start(name: str, argv: list[str]) -> None:
        logs[name] = launch / f"{name}.log"
        procs[name] = subprocess.Popen(argv, stdout=open(logs[name], "ab"), stderr=subprocess.STDOUT, env=env,
                                       start_new_session=True)
    with signals_raise():
        try:
            start("server", _cmd(*args))
            port = _wait_port(status, procs["server"], logs["server"], start_timeout)
            for h, hc in sorted(configs.items()):
                path = Path(hc.state_dir) / "holder.yaml"
                atomic_write_text(path, dump_yaml(replace(hc, server=f"127.0.0.1:{port}")))
                start(f"holder-{h}", _cmd("client", "--config", str(path), "--launched"))
            _follow(rd, procs, logs, progress, cfg.federation.rounds)
            rc = procs["server"].wait()
            if rc not in (0, 5):
                raise LaunchError(f"the coordinator exited with code {rc}; its log ({logs['server']}) ends:\n"
                                  f"{_tail(logs['server'])}")
            deadline = time.monotonic() + 30
            for name, p in procs.items():
                if name != "server":
                    try:
                        p.wait(timeout=max(0.1, deadline - time.monotonic()))
                    except subprocess.TimeoutExpired:   # told the run ended (transport.md §5.4), it should be gone
                        log.warning("%s still running 30 s after the coordinator exited: terminated", name)
                        p.terminate()
                        with contextlib.suppress(subprocess.TimeoutExpired):
                            p.wait(timeout=10)
            codes = {name: p.poll() for name, p in procs.items()}
            atomic_write_text(launch / "exit_codes.json", json.dumps(codes, sort_keys=True) + "\n")
        finally:
            for p in procs.values():
                if p.poll() is None:
                    _kill_group(p)
    if stop_after_round is not None and not rd.summary.exists():
        return {"stopped_after_round": stop_after_round}
    try:
        summary = jsonio.read_json(rd.summary)
    except (OSError, jsonio.JSONFileError) as e:
        raise LaunchError(f"the run ended but its summary cannot be read: {e}") from None
    if not isinstance(summary, dict):
        raise LaunchError(f"the run ended but {rd.summary} does not hold a JSON object")
    if rc == 5:
        summary["stopped"] = "too few holders"
    return summary


def _kill_group(p: subprocess.Popen) -> None:
    """Kill a started process and everything it started (it leads its own session: start_new_session)."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        p.kill()
    p.wait()


@contextlib.contextmanager
def signals_raise():
    """SIGTERM / SIGHUP raise SystemExit(128 + signal) in this (main) thread while the federation runs, so the
    ``finally`` above (and run_ray's, ray_cluster.py) kills the processes it started instead of leaving them
    running (their own sessions do not get the terminal's signals). The exit code survives a library that turns
    the exception into its own (Ray's ray.wait raises SystemExit(1) instead). Elsewhere than the main thread:
    nothing to install."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []

    def stop(signum, _frame):
        got.append(signum)
        raise SystemExit(128 + signum)
    old = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    except SystemExit:
        if got:
            raise SystemExit(128 + got[0]) from None
        raise
    finally:
        for sig, handler in old.items():
            if handler is not None:    # None: a handler not installed from Python, which cannot be put back
                signal.signal(sig, handler)


def _wait_port(status: Path, server: subprocess.Popen, log: Path, timeout: float) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.poll() is not None:
            raise LaunchError(f"the coordinator exited with code {server.returncode} before listening; its log "
                              f"({log}) ends:\n{_tail(log)}")
        port = (_read_status(status) or {}).get("port")   # None while it is absent, torn or not an object
        if isinstance(port, int) and not isinstance(port, bool) and port > 0:
            return port
        time.sleep(0.2)
    raise LaunchError(f"the coordinator did not start listening within {timeout:.0f}s; its log ({log}) ends:\n{_tail(log)}")


def _follow(rd: RunDir, procs: dict, logs: dict, progress, rounds: int) -> None:
    """Print each finished round's line (and a heartbeat) while the coordinator runs; a holder that
    exits with a configuration error (2) stops the whole local federation with its message."""
    from securefed.federation.coordinator import status_line

    server = procs["server"]
    seen, last = 0, time.monotonic()
    while server.poll() is None:
        time.sleep(0.5)
        for name, p in procs.items():
            if name != "server" and p.poll() == 2:
                raise LaunchError(f"{name} refused its configuration; its log ({logs[name]}) ends:\n{_tail(logs[name])}")
        rows = RunDir.read_jsonl(rd.metrics) if rd.metrics.exists() else []
        for row in rows[seen:]:
            if "clients_survived" in row and "seconds" in row:
                progress.print(status_line(row, rounds))
            last = time.monotonic()
        seen = max(seen, len(rows))
        if time.monotonic() - last > 30:
            now = board_line(_read_status(rd.root / "status.json"))
            progress.print(f"waiting for round {seen + 1}/{rounds} ({len(rows)} rounds so far)"
                           + (f": {now}" if now else ""))
            last = time.monotonic()


def _read_status(path: Path) -> dict | None:
    """The coordinator's status.json (written atomically), or None while there is none or it is not an object."""
    try:
        status = jsonio.read_json(path)
    except (OSError, jsonio.JSONFileError):
        return None
    return status if isinstance(status, dict) else None


def board_line(status: dict | None) -> str | None:
    """What the coordinator waits for now, from its RUN_DIR/status.json (GrpcChannel keeps it current):
    "round 2: local training, replies 3/4 (in: 1, 2, 4)" or "round 1: waiting for holders (asking: 1, 3)"."""
    from securefed.federation.stages import stage_label

    b = (status or {}).get("board")
    if not isinstance(b, dict) or b.get("ended"):
        return None
    try:
        r, stage = int(b.get("round", 0)), int(b.get("stage", -1))
        expect, done = [int(h) for h in b.get("expect") or []], [int(h) for h in b.get("done") or []]
        asking = [int(h) for h in status.get("asking") or []]
        if stage >= 0 and expect:
            ins = [h for h in done if h in expect]
            return (f"round {r}: {stage_label(stage)}, replies {len(ins)}/{len(expect)}"
                    + (f" (in: {', '.join(map(str, ins))})" if ins else ""))
        if "waiting_for_round" in status:
            return (f"round {int(status['waiting_for_round'])}: waiting for holders (asking: "
                    f"{', '.join(map(str, asking)) or 'none yet'})")
    except (TypeError, ValueError):   # a status file from another version: say nothing rather than fail the run
        return None
    return None
