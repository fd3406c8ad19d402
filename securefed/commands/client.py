"""`securefed client`: one data holder of a networked federation (gRPC + mutual TLS).

The holder's own YAML config (securefed.federation.holder_config) fixes its data, its floors, its ε
budget and its hardware; nothing the coordinator sends can change them. Exit codes
(protocols/transport.md §10): 0 all rounds done, or the coordinator ended the run on its ε cap · 1 unexpected
error · 2 usage/config error (bad or contradictory holder config, missing key or data file) · 3 the
coordinator refused this holder's certificate · 5 the coordinator ended the run: too few holders · 6
coordinator unreachable after max_failures, or silent past patience_s · 7 the run is below this holder's floors (at the welcome, or in every round offered) · 8 the coordinator
stopped before its last round (start the client again if it resumes) · 9 another process takes part with this
holder's identity key.
"""

from __future__ import annotations

import argparse
import sys


EPILOG = """exit status (protocols/transport.md §10):
  0  all rounds done, or the coordinator ended the run on its epsilon cap
  1  unexpected error
  2  usage or config error (bad or contradictory holder config, missing key or data file): nothing sent
  3  the coordinator refused this holder's certificate, or its certificate fails this holder's TLS checks
  4  this holder's own state files are unreadable, inconsistent or cannot be written (disk full, read-only):
     nothing unrecorded sent; start it again once they can be written
  5  the coordinator ended the run: too few holders
  6  coordinator unreachable after max_failures attempts, or silent past patience_s (holder config)
  7  the run is below this holder's floors: nothing sent (at the welcome, or every round offered refused)
  8  the coordinator stopped before its last round (start the client again when it resumes)
  9  another process takes part with this holder's identity key: stop one of them"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="run one data holder against a coordinator (gRPC + mutual TLS)",
                       description="Joins a federation as one data holder. Everything the holder decides for "
                                   "itself is in its own config file (see README, 'Deployment'): data paths, secure-"
                                   "aggregation and privacy floors, its epsilon cap, hardware, key directory.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="this holder's YAML config (holder_id, state_dir, pki, data, policy)")
    p.add_argument("--server", help="coordinator HOST:PORT (overrides the config's server)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting of the holder config, e.g. --set policy.epsilon_cap=4 (repeatable)")
    p.add_argument("--launched", action="store_true", help=argparse.SUPPRESS)  # by simulate --backend grpc: test fields allowed
    p.add_argument("--log-json", action="store_true", help="JSON-lines logs on stderr")
    p.add_argument("--log-level", dest="net_log_level", default="INFO", help="log level of the holder (default INFO)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.launched:   # started by `simulate --backend grpc`: it dies with that process, however it dies
        from securefed.federation.launch import die_with_launcher

        die_with_launcher()
    from securefed.transport.logjson import setup_logging

    setup_logging(json_lines=args.log_json, level=args.net_log_level)
    from securefed.federation.client import main

    args.resume_hint = "start the client again with the same --config: it rejoins the run from its own state"

    return main(args.config, overrides=args.overrides, server=args.server, simulation=args.launched)


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="securefed")
    register(_p.add_subparsers())
    sys.exit(run(_p.parse_args(["client", *sys.argv[1:]])))
