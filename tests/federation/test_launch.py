"""`securefed simulate --backend grpc`: the launcher and the processes it starts (securefed/federation/launch.py).

A crash review found (1) a coordinator process that refused — `--resume` of a run whose checkpoints/latest.pt is
truncated, or of a run directory another process holds — made simulate print a LaunchError traceback and exit 1,
where the in-process backend says one line and exits 4; (2) after `kill -9` of the launcher, the coordinator and
holder processes (each in its own session) ran on alone, and the next launcher read the orphan coordinator's
status.json and started its holders against that one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from securefed.cli import main


def _alive(pid: int) -> bool:
    """The process exists and is not a zombie (a killed orphan may wait for a reaper that never comes)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def _fake_run(run, overrides):
    """A run directory whose coordinator refuses a --resume: its settings, and a checkpoint cut to 100 bytes."""
    from securefed.configio import dump_yaml
    from securefed.runtime.config import load_run_config

    cfg = load_run_config(overrides=overrides)
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(dump_yaml(cfg))
    (run / "checkpoints" / "latest.pt").write_bytes(b"PK\x03\x04" + bytes(96))


@pytest.mark.parametrize("why", ["checkpoint cut short", "run directory in use"])
def test_a_refusing_coordinator_process_is_one_line_in_its_own_words_and_its_exit_code(tmp_path, tiny_run, capsys, why):
    run = tmp_path / "run"
    _fake_run(run, tiny_run)
    (run / "launch").mkdir()
    (run / "launch" / "server.log").write_text("securefed server: an earlier launch's last words\n")
    if why == "run directory in use":   # as a coordinator left running on it would (here: this process holds it)
        from securefed.runtime.rundir import hold_exclusive

        hold_exclusive(run, "the run directory")
    argv = ["simulate", "--backend", "grpc", "--out", str(run), "--resume", "--quiet"]
    assert main(argv + [a for o in tiny_run for a in ("--set", o)]) == 4
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    assert lines[0].startswith("securefed simulate: the coordinator (securefed server) exited with code 4 before "
                               "listening: securefed server: "), err
    said = "latest.pt cannot be read" if why == "checkpoint cut short" else f"is in use by another process (pid {os.getpid()}"
    assert said in lines[0] and f"(its log: {run / 'launch' / 'server.log'})" in lines[0], err
    assert "an earlier launch" not in err   # the log is appended to: only this launch's lines are its words


def test_the_process_own_message_is_read_from_this_launch_of_its_log(tmp_path):
    from securefed.federation.launch import _exited

    log = tmp_path / "server.log"
    log.write_text("securefed server: last time's refusal\n")
    start = log.stat().st_size
    with open(log, "a") as f:   # a multi-line refusal (the pre-flight check's), then nothing of its own: a traceback
        f.write("2026-01-01 INFO securefed: loading\nsecurefed server: refused:\n  epsilon 12 > 8\n")
    e = _exited("the coordinator", 2, log, start)
    assert (e.code, e.cause) == (2, "securefed server: refused:\n  epsilon 12 > 8") and "last time" not in str(e)
    with open(log, "a") as f:
        f.write("Traceback (most recent call last):\n  File x\nKeyError: 'boom'\n")
    e = _exited("the coordinator", -9, log, log.stat().st_size - len("KeyError: 'boom'\n"))
    assert str(e) == f"the coordinator was killed by SIGKILL: KeyError: 'boom' (its log: {log})"


def test_the_launcher_waits_for_its_own_coordinator_not_one_left_running_on_the_directory(tmp_path):
    """An orphan coordinator rewrites RUN_DIR/status.json with its own port and pid: the launcher must not take it."""
    import types

    from securefed.federation.launch import LaunchError, _wait_port

    (tmp_path / "status.json").write_text(f'{{"port": 4242, "pid": {os.getpid()}}}')
    mine = types.SimpleNamespace(poll=lambda: None, pid=os.getpid() + 1)
    with pytest.raises(LaunchError, match="did not start listening within 1s"):
        _wait_port(tmp_path / "status.json", mine, tmp_path / "server.log", 1.0)


LAUNCHER = """
import os, subprocess, sys
from securefed.federation.launch import LAUNCHER_ENV
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]], start_new_session=True,
                         env=dict(os.environ, **{LAUNCHER_ENV: str(os.getpid())}))
print(child.pid, flush=True)
child.wait()
"""
CHILD = """
import sys, time
from securefed.federation.launch import die_with_launcher
die_with_launcher()
open(sys.argv[1], "w").close()
time.sleep(120)
"""


def test_a_started_process_dies_with_its_launcher_killed_by_sigkill(tmp_path):
    """kill -9 of the launcher runs none of its ``finally``: the process it started (its own session, as run_grpc
    starts them) must die with it rather than go on with the run alone."""
    ready = tmp_path / "ready"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, CHILD, str(ready)], stdout=subprocess.PIPE, text=True,
                                env=env)
    try:
        child = int(launcher.stdout.readline())
        for _ in range(300):
            if ready.exists():
                break
            time.sleep(0.1)
        assert ready.exists() and _alive(child)
        os.kill(launcher.pid, signal.SIGKILL)
        launcher.wait()
        for _ in range(100):
            if not _alive(child):
                break
            time.sleep(0.1)
        assert not _alive(child), "the started process outlived its launcher"
    finally:
        launcher.kill()
        if "child" in locals() and _alive(child):
            os.kill(child, signal.SIGKILL)


def test_server_and_client_started_by_the_launcher_ask_to_die_with_it(tmp_path, monkeypatch):
    from securefed.federation import launch

    calls = []
    monkeypatch.setattr(launch, "die_with_launcher", lambda: calls.append(1))
    assert main(["server", "--launched", "--status", str(tmp_path)]) == 2          # (no status there: exit 2)
    assert main(["client", "--launched", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert calls == [1, 1]
    assert main(["server", "--status", str(tmp_path)]) == 2 and calls == [1, 1]   # by hand: not asked


@pytest.mark.parametrize("backend", ["ray", "grpc"])
@pytest.mark.parametrize("ray_rewrites_it", [False, True], ids=["as-raised", "ray-made-it-SystemExit(1)"])
def test_sigterm_during_a_launchers_rounds_says_how_to_resume(tmp_path, capsys, monkeypatch, backend, ray_rewrites_it):
    """A crash review of `simulate --backend ray` (scripts in /tmp/revray/): SIGTERM during the rounds, between the
    holders' releases and the ledger append, or just after summary.json exited 143 with no line at all — the launcher's
    guard (signals_raise) raised SystemExit, which went past the command's "interrupted (SIGTERM); ... --resume" line
    (Ctrl-C and the in-process backend said it). The guard's exception is now a KeyboardInterrupt naming the signal,
    also when a library turned its SystemExit into its own (Ray's ray.wait: SystemExit(1)). federation.md §6."""
    from securefed.federation import simulation
    from securefed.federation.launch import signals_raise

    out = tmp_path / "r"

    def init(self, *a, **kw):   # a run directory with a checkpoint: what --resume continues
        (out / "checkpoints").mkdir(parents=True)
        (out / "checkpoints" / "latest.pt").write_bytes(b"x")
        (out / "config.yaml").write_text("seed: 0\n")

    def run(self):              # the launcher's rounds (run_ray / run_grpc run under this guard)
        with signals_raise():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
            except SystemExit:
                if ray_rewrites_it:
                    raise SystemExit(1) from None
                raise
        raise AssertionError("not stopped")
    monkeypatch.setattr(simulation.Simulation, "__init__", init)
    monkeypatch.setattr(simulation.Simulation, "run", run)
    assert main(["simulate", "--backend", backend, "--out", str(out)]) == 143
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (f"securefed simulate: interrupted (SIGTERM); the run in {out} continues from "
                                            f"its last checkpoint with the same arguments and --out {out} --resume"), err


def test_the_launcher_relays_the_coordinators_round_and_closing_warnings(tmp_path, caplog):
    """A newcomer's review: under `simulate --backend grpc` an aborted round, a perplexity above the unigram's and
    "only 2 of 3 planned rounds updated the model" were only in RUN_DIR/launch/server.log, where the in-process and
    Ray backends print them. The launcher now relays each row's warnings (also rows written just before the
    coordinator exited) and summary.json's closing warnings — here with the console off, as WARNING records."""
    import json
    import logging

    from securefed.federation.launch import _follow
    from securefed.progress import Progress
    from securefed.runtime.rundir import RunDir

    rd = RunDir(tmp_path / "run")
    rd.root.mkdir()
    rows = [{"round": 1, "clients_survived": 4, "clients_sampled": 4, "bytes_up": 1e6, "seconds": 1.0, "warnings": []},
            {"round": 2, "aborted": "0 of 4 sampled holders took part: too few", "clients_survived": 0,
             "clients_sampled": 4, "warnings": ["round aborted: 0 of 4 sampled holders took part: too few"]}]
    rd.metrics.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rd.summary.write_text(json.dumps({"warnings": ["only 1 of 2 planned rounds updated the model"]}))

    class Exited:   # the coordinator process, already gone: only the final look reads the rows
        def poll(self):
            return 0

    caplog.set_level(logging.WARNING, logger="securefed.launch")
    _follow(rd, {"server": Exited()}, {}, Progress(enabled=False), 2)
    said = [r.getMessage() for r in caplog.records if r.name == "securefed.launch"]
    assert said == ["WARNING round 2: round aborted: 0 of 4 sampled holders took part: too few",
                    "WARNING: only 1 of 2 planned rounds updated the model"], said
