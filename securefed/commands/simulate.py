"""`securefed simulate`: run a whole federation on this machine (the README's demo command)."""

from __future__ import annotations

import argparse
import json
import sys

from securefed.configio import ConfigError, dump_yaml


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run a federated pre-training simulation on this machine",
                       description="Run holders, secure aggregation, DP accounting and the centralized baseline "
                                   "in one process. With no arguments: the embedded demo preset.")
    p.add_argument("--preset", default="demo", help="run preset (see --list-presets); default: demo")
    p.add_argument("--config", help="YAML file merged over the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set federation.rounds=4 (repeatable)")
    p.add_argument("--out", help="run directory (default: runs/run-<UTC timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--backend", choices=("inproc", "grpc"), default="inproc",
                   help="inproc: every holder in this process (default); grpc: the coordinator and each holder as "
                        "separate processes on loopback with fresh mutual-TLS keys (the deployment code path)")
    p.add_argument("--threads-per-holder", type=int, metavar="N",
                   help="torch threads of each holder's training (both backends; 1 makes runs bit-comparable)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-presets", action="store_true", help="list run presets and exit")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # Everything up to the heavy import below is torch-free (tests/runtime/test_config_fast.py), so a bad
    # config, --out or --resume is refused in well under 2 s (benchmarks/firsthour/config_errors.py).
    from securefed.configio import to_dict
    from securefed.runtime.config import list_presets, load_run_config
    from securefed.runtime.metrics_log import check_loggers
    from securefed.runtime.rundir import RunDirError, check_out_dir, default_run_dir

    if args.list_presets:
        print("\n".join(list_presets()))
        return 0
    try:
        cfg = load_run_config(preset=args.preset, config_file=args.config, overrides=args.overrides)
        check_loggers(cfg.logging)
    except (ConfigError, ValueError) as e:
        print(f"securefed simulate: configuration error: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    if args.resume and not args.out:
        print("securefed simulate: --resume needs --out RUN_DIR", file=sys.stderr)
        return 2
    out = args.out or str(default_run_dir())
    try:
        check_out_dir(out, resume=args.resume, resolved=to_dict(cfg))
    except RunDirError as e:
        print(f"securefed simulate: {e}", file=sys.stderr)
        return 2
    from securefed.federation.simulation import Simulation

    try:
        sim = Simulation(cfg, out, resume=args.resume, progress=not args.quiet, backend=args.backend,
                         threads_per_holder=args.threads_per_holder)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"securefed simulate: {e}", file=sys.stderr)
        return 2
    summary = sim.run()
    print(json.dumps(summary, indent=2, sort_keys=True))
    print(f"run directory: {out}  (report: {out}/report/report.html)")
    return 0
