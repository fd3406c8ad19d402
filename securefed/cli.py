"""The `securefed` command: one subcommand per module in securefed.commands."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

import securefed

# each module defines register(subparsers) and sets func=run(args) -> int
COMMANDS = ("simulate", "corpus", "report", "verify", "keygen", "server", "client", "audit")

EPILOG = """examples:
  securefed simulate                          the demo: 4 holders, secure aggregation, baseline (~3 min on 2 cores)
  securefed simulate --preset dp --out runs/dp
  securefed report runs/dp                    re-render the report of a run directory
  securefed keygen pki/ --holders 3           a demo PKI for the networked deployment

exit status: 0 success; 2 bad usage, config or input (one message on stderr, nothing half-written);
130 interrupted (Ctrl-C: a run resumes with --resume); 143 / 129 stopped by SIGTERM / SIGHUP (the same);
141 its output's reader went away (`| head`): the work was done, the rest of its output not printed;
other codes per command (see its --help)."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (a service manager's stop, `kill`, a closed terminal), raised in the main thread: the same
    way out as Ctrl-C — every ``finally`` runs, one line says what to do next, exit 128 + the signal. Without it the
    process vanished mid-round with no line at all (the crash review: `kill` of `securefed server` left a log that
    simply ended, exit -15)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _terminated(signum, _frame) -> None:
    raise Terminated(signum)


def _log_level(text: str) -> str:
    """--log-level's value, case-insensitive; a typo (`--log-level DEBG`) is a usage error (exit 2), not quietly WARNING."""
    level = str(text).upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise argparse.ArgumentTypeError(f"expected DEBUG, INFO, WARNING or ERROR, got {text!r}")
    return level


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="securefed", description=(
        "Privacy-hardened federated pre-training of causal LMs: secure aggregation, CKKS, DP accounting."),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"securefed {securefed.__version__}",
                        help="print the version and exit")
    parser.add_argument("--log-level", default="WARNING", metavar="LEVEL", type=_log_level,
                        help="Python logging level: DEBUG, INFO, WARNING (default), ERROR")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands",
                                description="`securefed COMMAND --help` explains each one")
    for name in COMMANDS:
        importlib.import_module(f"securefed.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    # gRPC core logs at INFO each failed TLS handshake and more, interleaved with securefed's own line that names
    # the cause (transport.md §6.3); its ERROR lines stay. GRPC_VERBOSITY set by the user wins (DEBUG shows all).
    # A coordinator cannot log a peer's failed handshake itself (no grpc Python hook; transport.md §7.1): an operator
    # who wants core's line per failure (OpenSSL's reason, no peer address, not rate-limited) sets it to INFO.
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    import threading

    # (main thread only, and put back on return: tests and tools call main() in-process)
    old = ({sig: signal.signal(sig, _terminated) for sig in (signal.SIGTERM, signal.SIGHUP)}
           if threading.current_thread() is threading.main_thread() else {})
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()   # a reader that went away (`| head`) is met here, in the handler below, not at exit
        return code
    except BrokenPipeError:
        # `securefed verify RUN | head -1`: the command's work is done (a report written, a run finished); what it had
        # left to print has no reader. Without this: a BrokenPipeError traceback and exit 1 ("a record does not
        # verify" for verify/report). Point stdout at /dev/null so the exit's own flush cannot raise again.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):   # a stdout without a file descriptor (in-process callers)
            pass
        return 128 + int(signal.SIGPIPE)   # 141, as a shell reports a process ended by SIGPIPE
    except KeyboardInterrupt as e:   # Ctrl-C, SIGTERM, SIGHUP: one line saying what to do next, not a traceback
        signum = getattr(e, "signum", signal.SIGINT)   # Terminated here, or launch.Stopped from a launcher's guard
        hint = getattr(args, "resume_hint", None)
        hint = hint() if callable(hint) else hint   # said as things stand when the interrupt came
        how = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        try:
            print(f"\nsecurefed {args.command}: interrupted ({how})" + (f"; {hint}" if hint else ""), file=sys.stderr,
                  flush=True)
        except OSError:   # a closed terminal (SIGHUP): nowhere to say it
            pass
        return 128 + int(signum)   # 130 for SIGINT, 143 for SIGTERM, as a shell reports them
    finally:
        for sig, handler in old.items():
            if handler is not None:   # None: installed outside Python, cannot be put back
                signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
