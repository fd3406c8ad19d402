"""The `securefed` command: one subcommand per module in securefed.commands."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

import securefed

# each module defines register(subparsers) and sets func=run(args) -> int
COMMANDS = ("simulate", "corpus", "report", "verify", "keygen", "server", "client", "audit")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="securefed", description=(
        "Privacy-hardened federated pre-training of causal LMs: secure aggregation, CKKS, DP accounting."))
    parser.add_argument("--version", action="version", version=f"securefed {securefed.__version__}")
    parser.add_argument("--log-level", default="WARNING", help="logging level (DEBUG, INFO, WARNING, ...)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"securefed.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=getattr(logging, str(args.log_level).upper(), logging.WARNING),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
