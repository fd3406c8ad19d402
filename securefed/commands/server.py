"""`securefed server`: the coordinator + aggregator of a networked federation (gRPC, mutual TLS).

Exit codes (protocols/transport.md §10): 0 all rounds done · 1 unexpected error · 2 usage/config error ·
4 checkpoint and privacy ledger disagree · 5 too few holders (join deadline, or repeated aborted rounds).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("server", help="run the coordinator of a networked federation (gRPC + mutual TLS)")
    p.add_argument("--pki", help="keygen directory (ca.pem, server/, roster.yaml)")
    p.add_argument("--out", help="run directory (checkpoints, metrics, privacy ledger)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--status", metavar="RUN_DIR", help="print the status of a (running or finished) run and exit")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=50051, help="0 picks a free port (written to RUN_DIR/status.json)")
    p.add_argument("--preset", default="demo", help="run preset of the LM workload")
    p.add_argument("--config", help="YAML file merged over the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--synthetic-dim", type=int, help="synthetic workload of this many parameters (load tests)")
    p.add_argument("--rounds", type=int, help="synthetic: rounds (LM: federation.rounds)")
    p.add_argument("--cohort", type=int, help="synthetic: cohort size (LM: federation.clients_per_round)")
    p.add_argument("--neighbours", type=int, help="synthetic: SecAgg+ degree (0 auto; LM: aggregation.secagg)")
    p.add_argument("--min-holders", type=int, help="holders needed to open a round (default: t_min)")
    for stage, default in (("join", 120.0), ("train", 600.0), ("control", 60.0), ("upload", 600.0)):
        p.add_argument(f"--deadline-{stage}", type=float, default=default, help=f"seconds (default {default:g})")
    p.add_argument("--chunk-mib", type=float, default=1.0, help="stream chunk size in MiB (<= 4)")
    p.add_argument("--log-json", action="store_true", help="JSON-lines logs on stderr")
    p.add_argument("--log-level", dest="net_log_level", default="INFO")
    p.set_defaults(func=run)


def _status(run_dir: str) -> int:
    path = Path(run_dir) / "status.json"
    if not path.exists():
        print(f"securefed server: no status in {run_dir}", file=sys.stderr)
        return 2
    print(json.dumps(json.loads(path.read_text()), indent=2, sort_keys=True))
    return 0


def run(args: argparse.Namespace) -> int:
    if args.status:
        return _status(args.status)
    if not args.pki or not args.out:
        print("securefed server: --pki and --out are required", file=sys.stderr)
        return 2
    from securefed.privacy import DPConfig
    from securefed.runtime.netserver import EXIT, NetServer, ServerPlan, StateError
    from securefed.secagg import SecAggConfig
    from securefed.transport.coordinator import Deadlines
    from securefed.transport.logjson import setup_logging
    from securefed.transport.workload import SyntheticServer

    setup_logging(json_lines=args.log_json, level=args.net_log_level)
    dl = Deadlines(args.deadline_join, args.deadline_train, args.deadline_control, args.deadline_upload)
    chunk = int(args.chunk_mib * (1 << 20))
    try:
        if args.synthetic_dim:
            sa = SecAggConfig(neighbours=args.neighbours)
            cohort = args.cohort or 5
            workload, seed, rounds, text = SyntheticServer(args.synthetic_dim), 0, args.rounds or 1, ""
            privacy = DPConfig(clip=1.0)
        else:
            from securefed.configio import dump_yaml
            from securefed.runtime.config import load_run_config
            from securefed.transport.workload import LMServer

            cfg = load_run_config(preset=args.preset, config_file=args.config, overrides=args.overrides)
            if cfg.aggregation.mode != "secagg":
                raise ValueError("the networked deployment supports aggregation.mode=secagg only")
            sa, cohort, seed = cfg.aggregation.secagg, cfg.federation.cohort_size, cfg.seed
            rounds, privacy, text = cfg.federation.rounds, cfg.privacy, dump_yaml(cfg)
            workload = LMServer(cfg)
        t_min = sa.thresholds(cohort).min_survivors
        plan = ServerPlan(rounds=rounds, cohort_size=cohort, min_holders=args.min_holders or t_min, secagg=sa,
                          privacy=privacy, seed=seed, deadlines=dl, chunk_size=chunk)
        srv = NetServer(plan, workload, pki=args.pki, out=args.out, host=args.host, port=args.port,
                        resume=args.resume, config_text=text)
    except StateError as e:
        print(f"securefed server: {e}", file=sys.stderr)
        return EXIT["state"]
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, OSError) as e:
        print(f"securefed server: {e}", file=sys.stderr)
        return EXIT["usage"]
    return srv.serve()


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="securefed")
    register(_p.add_subparsers())
    sys.exit(run(_p.parse_args(["server", *sys.argv[1:]])))
