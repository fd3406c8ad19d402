"""The `securefed` command: one subcommand per module in securefed.commands."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
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
130 interrupted (Ctrl-C: a run resumes with --resume); other codes per command (see its --help)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="securefed", description=(
        "Privacy-hardened federated pre-training of causal LMs: secure aggregation, CKKS, DP accounting."),
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"securefed {securefed.__version__}",
                        help="print the version and exit")
    parser.add_argument("--log-level", default="WARNING", metavar="LEVEL",
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
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:   # Ctrl-C: one line saying what to do next, not a traceback from wherever it landed
        hint = getattr(args, "resume_hint", None)
        hint = hint() if callable(hint) else hint   # said as things stand when the interrupt came
        print(f"\nsecurefed {args.command}: interrupted (Ctrl-C)" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 130   # 128 + SIGINT, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
