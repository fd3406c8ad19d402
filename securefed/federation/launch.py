"""`securefed simulate --backend grpc`: the deployment code path on one machine.

The coordinator (`securefed server`) and every holder (`securefed client --config holders/<id>/holder.yaml`)
run as separate processes on loopback, with the fresh mutual-TLS keys in RUN_DIR/pki. This process
only starts them, shows their progress from RUN_DIR/metrics.jsonl, and collects their exit codes. It
owns them: however it ends (an error, Ctrl-C, SIGTERM, SIGHUP), their process groups are killed with it; killed
itself (SIGKILL, which runs no ``finally``), they die with it (:func:`die_with_launcher`).
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

__all__ = ["run_grpc", "LaunchError", "Stopped", "signals_raise", "die_with_launcher", "LAUNCHER_ENV"]

log = logging.getLogger("securefed.launch")


# set in the environment of every process run_grpc starts: the launcher's pid (die_with_launcher)
LAUNCHER_ENV = "SECUREFED_LAUNCHER_PID"


class LaunchError(RuntimeError):
    """A process of the local federation failed. The message is one line: which process, its exit status and its own
    last message (``cause``, from its log), and where its log is. ``code``: its exit status (negative: killed by that
    signal; None: it did not exit, or the failure is the launcher's own)."""

    def __init__(self, message: str, *, code: int | None = None, cause: str = "", log: Path | None = None) -> None:
        super().__init__(message)
        self.code, self.cause, self.log = code, cause, log


def _exited(process: str, code: int, log: Path, start: int, when: str = "") -> LaunchError:
    """A LaunchError for ``process`` that exited with ``code``: its own message (what `securefed server` / `client`
    print on a refusal, such as an unreadable checkpoint or a run directory in use) read from its log, which may
    hold earlier runs' lines before byte ``start``."""
    how = f"was killed by {_signal_name(-code)}" if code < 0 else f"exited with code {code}"
    cause = _own_message(log, start)
    return LaunchError(f"{process} {how}{when}: " + (cause or "it said nothing") + f" (its log: {log})",
                       code=code, cause=cause, log=log)


def _signal_name(n: int) -> str:
    try:
        return signal.Signals(n).name
    except ValueError:
        return f"signal {n}"


def _own_message(path: Path, start: int = 0, limit: int = 2000) -> str:
    """A process's own last word in its log since byte ``start``: from its last ``securefed server:`` / ``securefed
    client:`` line (what each command prints when it refuses or stops; a pre-flight refusal spans lines) to the end,
    else its last line (an unexpected error's exception)."""
    try:
        with open(path, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    own = [i for i, line in enumerate(lines) if line.startswith(("securefed server: ", "securefed client: "))]
    said = "\n".join(lines[own[-1]:]) if own else (lines[-1] if lines else "")
    return said if len(said) <= limit else said[:limit] + " …"


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "securefed.cli", *args]


def die_with_launcher() -> None:
    """Called first by a process that run_grpc started (`securefed server --launched`, `client --launched`): die with
    the launcher. Each leads its own session (the terminal's Ctrl-C reaches only the launcher, which stops them), and
    a launcher killed by SIGKILL runs no ``finally``: the crash review's kill -9 of `simulate --backend grpc` left the
    coordinator and holders running on alone — no report, no launch/exit_codes.json, and a --resume at once was
    refused ("in use by another process"). Linux: PR_SET_PDEATHSIG, SIGKILL when the launcher's thread that started
    this process ends (run_grpc starts every process from one thread, and waits for them there); elsewhere a thread
    watches the parent pid. SIGKILL, as the launcher got: every file of the run is written atomically (a crash at any
    point resumes). No-op without the launcher's pid in the environment (a process started by hand)."""
    try:
        launcher = int(os.environ.pop(LAUNCHER_ENV))
    except (KeyError, ValueError):
        return
    if not _parent_death_signal(signal.SIGKILL):
        def watch() -> None:
            while os.getppid() == launcher:
                time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGKILL)
        threading.Thread(target=watch, name="die-with-launcher", daemon=True).start()
    if os.getppid() != launcher:   # the launcher died before the signal was asked for: nobody is left to send it
        os.kill(os.getpid(), signal.SIGKILL)


def _parent_death_signal(sig: int) -> bool:
    """prctl(PR_SET_PDEATHSIG, sig) on Linux; False where it is not available."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl(1, sig, 0, 0, 0) == 0   # 1: PR_SET_PDEATHSIG (linux/prctl.h)


def run_grpc(cfg, rd: RunDir, configs: dict, *, progress, stop_after_round: int | None = None,
             resume: bool = False, start_timeout: float = 120.0) -> dict:
    launch = rd.root / "launch"
    launch.mkdir(exist_ok=True)
    run_yaml = launch / "run.yaml"
    atomic_write_text(run_yaml, dump_yaml(cfg))
    env = dict(os.environ, PYTHONUNBUFFERED="1", **{LAUNCHER_ENV: str(os.getpid())})
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
    starts: dict[str, int] = {}   # where this launch's lines begin in each log (a resume appends to the same logs)

    def start(name: str, argv: list[str]) -> None:
        logs[name] = launch / f"{name}.log"
        starts[name] = logs[name].stat().st_size if logs[name].exists() else 0
        with open(logs[name], "ab") as out:
            procs[name] = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    with signals_raise():
        try:
            start("server", _cmd(*args))
            port = _wait_port(status, procs["server"], logs["server"], start_timeout, start=starts["server"])
            for h, hc in sorted(configs.items()):
                path = Path(hc.state_dir) / "holder.yaml"
                atomic_write_text(path, dump_yaml(replace(hc, server=f"127.0.0.1:{port}")))
                start(f"holder-{h}", _cmd("client", "--config", str(path), "--launched"))
            _follow(rd, procs, logs, progress, cfg.federation.rounds, starts)
            rc = procs["server"].wait()
            if rc not in (0, 5):
                raise _exited("the coordinator (securefed server)", rc, logs["server"], starts["server"])
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


class Stopped(KeyboardInterrupt):
    """SIGTERM or SIGHUP ended the federation (:func:`signals_raise`): the way out of Ctrl-C, with ``signum``, so the
    command says "interrupted (SIGTERM); ... --resume" and exits 128 + the signal (securefed.cli)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def signals_raise():
    """SIGTERM / SIGHUP raise SystemExit(128 + signal) in this (main) thread while the federation runs, so the
    ``finally`` above (and run_ray's, ray_cluster.py) kills the processes it started instead of leaving them
    running (their own sessions do not get the terminal's signals). What leaves the block is :class:`Stopped`
    (a KeyboardInterrupt naming the signal), whatever a library made of the SystemExit on the way (Ray's ray.wait
    raises SystemExit(1) instead): as a SystemExit it went past the command's interrupt line, so a `simulate
    --backend ray` or `grpc` stopped by SIGTERM in its rounds or just after summary.json exited 143 with no word
    of --resume (a crash review; protocols/federation.md §6). Elsewhere than the main thread: nothing to install."""
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
    except BaseException:
        if got:
            raise Stopped(got[0]) from None
        raise
    finally:
        for sig, handler in old.items():
            if handler is not None:    # None: a handler not installed from Python, which cannot be put back
                signal.signal(sig, handler)


def _wait_port(status: Path, server: subprocess.Popen, log: Path, timeout: float, *, start: int = 0) -> int:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if server.poll() is not None:
            raise _exited("the coordinator (securefed server)", server.returncode, log, start, " before listening")
        st = _read_status(status) or {}   # {} while it is absent, torn or not an object
        port = st.get("port")
        # only the status of the process started here: another coordinator still running on this directory (one left
        # by a launcher killed before die_with_launcher) rewrites the file with its own port, and the holders started
        # next would have joined that one (the crash review)
        if st.get("pid") == server.pid and isinstance(port, int) and not isinstance(port, bool) and port > 0:
            return port
        time.sleep(0.2)
    said = _own_message(log, start)
    raise LaunchError(f"the coordinator (securefed server) did not start listening within {timeout:.0f}s"
                      + (f"; it last said: {said}" if said else "") + f" (its log: {log})", cause=said, log=log)


def _follow(rd: RunDir, procs: dict, logs: dict, progress, rounds: int, starts: dict | None = None) -> None:
    """Print each finished round's line (and a heartbeat) while the coordinator runs; a holder that
    exits with a configuration error (2) stops the whole local federation with its message."""
    from securefed.federation.coordinator import status_line

    server = procs["server"]
    seen, last = 0, time.monotonic()

    def relay() -> int:
        nonlocal seen, last
        rows = RunDir.read_jsonl(rd.metrics) if rd.metrics.exists() else []
        for row in rows[seen:]:
            if "clients_survived" in row and "seconds" in row:
                progress.print(status_line(row, rounds))
            # the round's warnings (an aborted round and its reason, a perplexity above the start's or the unigram's),
            # as the in-process and Ray backends say them: they were only in RUN_DIR/launch/server.log (a review)
            for w in row.get("warnings") or []:
                _warn(progress, f"WARNING round {row.get('round')}: {w}")
            last = time.monotonic()
        seen = max(seen, len(rows))
        return len(rows)

    while server.poll() is None:
        time.sleep(0.5)
        for name, p in procs.items():
            if name != "server" and p.poll() == 2:
                raise _exited(f"{name} (securefed client)", 2, logs[name], (starts or {}).get(name, 0),
                              " (it refused its configuration)")
        n_rows = relay()
        if time.monotonic() - last > 30:
            now = board_line(_read_status(rd.root / "status.json"))
            progress.print(f"waiting for round {seen + 1}/{rounds} ({n_rows} rounds so far)"
                           + (f": {now}" if now else ""))
            last = time.monotonic()
    relay()   # rows the coordinator wrote after the last look, before it exited
    try:      # and the run's own closing warnings (rounds that did not move the model)
        summary = jsonio.read_json(rd.summary) if rd.summary.exists() else {}
    except (OSError, jsonio.JSONFileError):
        summary = {}
    for w in (summary.get("warnings") or []) if isinstance(summary, dict) else []:
        _warn(progress, f"WARNING: {w}")


def _warn(progress, msg: str) -> None:
    """A warning of the coordinator process on this console (a log record at WARNING when the console is off)."""
    if getattr(progress, "enabled", False):
        from rich.markup import escape

        progress.print(f"[yellow]{escape(msg)}[/]")
    else:
        log.warning(msg)


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
