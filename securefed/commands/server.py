"""`securefed server`: the coordinator of a networked federation (gRPC + mutual TLS).

It runs the same Coordinator as `securefed simulate` (securefed.federation) over the gRPC channel.
Exit codes (protocols/transport.md §10): 0 all rounds done · 1 unexpected error · 2 usage/config error ·
4 checkpoint and privacy ledger disagree, --out in use by another server, or --out cannot be written · 5 too few holders (join deadline, or repeated aborted rounds).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from securefed import jsonio


EPILOG = """exit status (protocols/transport.md §10):
  0  all rounds done (or the server's epsilon cap reached); --resume of a run stopped after its summary.json: its
     report written, nothing else redone; --status: printed (the run ended, its server runs on
     this host, or - status written on another host, or naming none - this machine cannot tell: LIVENESS UNKNOWN)
  1  unexpected error; --status: the server that wrote it is no longer running on this host and the run did not end
  2  usage or config error (config, PKI, --out, --port in use, --resume under other settings): nothing written;
     --status: no status file
  4  checkpoint and privacy ledger disagree, --resume with another PKI's roster than the run's (its checkpoint
     records the roster), --out is in use by another server process, or it cannot be
     written once the run has begun (disk full, read-only): restart with --resume once it can (an --out that
     cannot be created at start: exit 2)
  5  too few holders (join deadline, network.max_aborted_rounds aborted rounds in a row, or every round aborted)"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run the coordinator of a networked federation (gRPC + mutual TLS)",
                       description="Runs the federation's coordinator: waits for the holders on the roster, runs "
                                   "the configured rounds (sampling, privacy plan, secure aggregation, outer step, "
                                   "evaluation, ledgers, checkpoints) and writes the run directory and report. "
                                   "Holders join with `securefed client --config HOLDER.yaml`.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pki", help="keygen directory (ca.pem, server/, roster.yaml): `securefed keygen`")
    p.add_argument("--out", help="run directory (checkpoints, metrics, privacy ledger, model, report)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--status", metavar="RUN_DIR", help="print the live status of a (running or finished) run and exit: "
                   "0, or 1 when the server that wrote it on this host is no longer running and the run did not end "
                   "(written on another host, or naming none: it says it cannot tell, exit 0)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port (written to RUN_DIR/status.json)")
    p.add_argument("--preset", default="demo", help="run preset (see `securefed simulate --list-presets`)")
    p.add_argument("--config", help="YAML file merged over the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set network.control=30 (repeatable)")
    p.add_argument("--log-json", action="store_true", help="JSON-lines logs on stderr")
    p.add_argument("--log-level", dest="net_log_level", default="INFO", help="log level of the server (default INFO)")
    p.add_argument("--launched", action="store_true", help=argparse.SUPPRESS)   # simulate --backend grpc made --out
    p.add_argument("--stop-after-round", type=int, help=argparse.SUPPRESS)    # tests: stop cleanly after round N
    p.set_defaults(func=run)


def _status(run_dir: str) -> int:
    """0: printed, and the run ended, or its server runs on this host, or this machine cannot tell (the status was
    written on another host, or names none: said so on stderr); 1: printed, but the server that wrote it is gone
    from this host before the run ended (killed or crashed: the file still reads as live); 2: no status."""
    path = Path(run_dir) / "status.json"
    if not path.is_file():
        print(f"securefed server: no status in {run_dir} (not a `securefed server` run directory, or it has not "
              "started listening yet)", file=sys.stderr)
        return 2
    try:
        st = jsonio.read_json(path)
    except (OSError, ValueError) as e:
        print(f"securefed server: {e}", file=sys.stderr)
        return 2
    if not isinstance(st, dict):   # a JSON list or number: not a status this command could judge
        print(f"securefed server: {path} is not a status (not a JSON object)", file=sys.stderr)
        return 2
    print(jsonio.dumps(st, indent=2))
    board = st.get("board")
    ended = board.get("ended") if isinstance(board, dict) else None
    updated = st.get("updated")
    try:   # a hand-edited or corrupt time (1e300, nan) is said as such, not a traceback
        when = f"last updated {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(updated))}" \
            if isinstance(updated, (int, float)) and not isinstance(updated, bool) else "no update time"
    except (OverflowError, OSError, ValueError):
        when = f"an unreadable update time ({updated!r})"
    if isinstance(ended, dict):
        print(f"run ended after round {ended.get('after_round')} ({ended.get('why')}); {when}", file=sys.stderr)
        return 0
    from securefed.federation.launch import board_line

    now = board_line(st)   # the stage in words ("round 2: local training, replies 3/4"), not only its number
    now = f"\nthe status says: {now}" if now else ""
    state, why = _liveness(st)
    if state == "gone":
        print(f"securefed server: NOT RUNNING: process {st['pid']}, which wrote this status, is gone and the run did "
              f"not end ({when}); the round shown is where it stopped: restart it with the same arguments and "
              f"--resume{now}", file=sys.stderr)
        return 1
    if state == "running":
        print(f"securefed server: running: process {st['pid']} on this host ({when}){now}", file=sys.stderr)
        return 0
    print(f"securefed server: LIVENESS UNKNOWN: {why}, so this machine cannot tell whether the server that wrote it "
          f"still runs ({when}); look on the server's machine{now}", file=sys.stderr)
    return 0


def _liveness(st: dict) -> tuple[str, str]:
    """("running" | "gone" | "unknown", why): whether the status's writer runs, judged only where its pid is known
    to be this host's. A status without a host (older versions, or written by hand) or from another host (a shared
    filesystem) is "unknown": a pid says nothing about another machine's processes."""
    import os
    import socket

    pid, host, here = st.get("pid"), st.get("host"), socket.gethostname()
    if not isinstance(pid, int) or isinstance(pid, bool) or not 0 < pid < 1 << 31:   # os.kill takes a C pid_t
        return "unknown", f"the status names no process id (pid {pid!r})"
    if not isinstance(host, str) or not host:
        return "unknown", f"the status names no host (pid {pid}; written by an older version, or by hand)"
    if host != here:
        return "unknown", f"the status was written on host {host!r} (pid {pid}), and this is {here!r}"
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone", ""
    except PermissionError:
        return "running", ""   # it exists, under another user
    try:   # a reused pid: another program now
        return ("running", "") if b"securefed" in Path(f"/proc/{pid}/cmdline").read_bytes() else ("gone", "")
    except OSError:
        return "running", ""   # no /proc to tell a reused pid by: it exists (the safe direction)


def run(args: argparse.Namespace) -> int:
    if args.launched:   # started by `simulate --backend grpc`: it dies with that process, however it dies
        from securefed.federation.launch import die_with_launcher

        die_with_launcher()
    if args.status:
        return _status(args.status)
    if not args.pki or not args.out:
        print("securefed server: --pki and --out are required", file=sys.stderr)
        return 2
    from securefed.configio import ConfigError
    from securefed.runtime.config import load_run_config
    from securefed.transport.logjson import setup_logging

    setup_logging(json_lines=args.log_json, level=args.net_log_level)
    try:
        cfg = load_run_config(preset=args.preset, config_file=args.config, overrides=args.overrides)
    except (ConfigError, ValueError) as e:
        print(f"securefed server: configuration error: {e}", file=sys.stderr)
        return 2
    if args.resume and not args.launched:   # (simulate --backend grpc checked its own --out)
        from securefed.configio import to_dict
        from securefed.runtime.rundir import RunDirError, check_out_dir

        try:   # under other settings: the settings that differ, as simulate says them, not a checkpoint mismatch
            check_out_dir(args.out, resume=True, resolved=to_dict(cfg))
        except RunDirError as e:
            print(f"securefed server: {e}", file=sys.stderr)
            return 2
    from securefed.runtime.rundir import resume_hint

    args.resume_hint = lambda: resume_hint(args.out, "with the same arguments and --resume")   # (securefed.cli on Ctrl-C)
    from securefed.federation.server import serve

    return serve(cfg, pki=args.pki, out=args.out, host=args.host, port=args.port, resume=args.resume,
                 launched=args.launched, stop_after_round=args.stop_after_round)


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="securefed")
    register(_p.add_subparsers())
    sys.exit(run(_p.parse_args(["server", *sys.argv[1:]])))
