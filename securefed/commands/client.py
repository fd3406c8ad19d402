"""`securefed client`: one data holder of a networked federation (gRPC, mutual TLS).

Exit codes (protocols/transport.md §10): 0 all rounds done · 1 unexpected error · 2 usage/config error ·
3 the coordinator refused this holder's certificate · 6 coordinator unreachable after --max-failures ·
7 the coordinator asked for secure-aggregation settings below this holder's floor (--min-graph/--min-ring-bits).
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("client", help="run one data holder against a coordinator (gRPC + mutual TLS)")
    p.add_argument("--pki", required=True, help="directory with holders/<id>/{cert,key,identity.key,ca.pem} and roster.yaml")
    p.add_argument("--id", type=int, required=True, help="this holder's id (must match its certificate)")
    p.add_argument("--server", default="127.0.0.1:50051", help="coordinator HOST:PORT")
    p.add_argument("--server-name", help="expected name in the server certificate, if not the HOST")
    p.add_argument("--state", required=True, help="directory for this holder's local state and own ledger")
    p.add_argument("--shard", type=int, help="LM workload: data shard index (default id-1)")
    p.add_argument("--torch-threads", type=int, help="LM workload: torch intra-op threads (1 when many holders share a machine)")
    p.add_argument("--max-failures", type=int, default=20, help="reconnect attempts before giving up (exit 6)")
    p.add_argument("--min-graph", choices=("complete", "auto"), default="complete",
                   help="weakest neighbour graph this holder accepts: complete (SecAgg, default) or auto "
                        "(SecAgg+ with at least the O(log n) degree of protocols/secagg.md §4)")
    p.add_argument("--min-ring-bits", type=int, default=32, help="smallest ring this holder accepts (16..32)")
    p.add_argument("--min-threshold-fraction", type=float, default=0.5, help="smallest Shamir threshold fraction accepted")
    p.add_argument("--log-json", action="store_true", help="JSON-lines logs on stderr")
    p.add_argument("--log-level", dest="net_log_level", default="INFO")
    p.set_defaults(func=run)


def make_workload(holder_id: int, welcome: dict, shard: int | None = None, threads: int | None = None):
    from securefed.transport.workload import LMHolder, SyntheticHolder

    if welcome.get("workload") == "synthetic":
        return SyntheticHolder(holder_id, int(welcome["dim"]))
    if welcome.get("workload") == "lm":
        import yaml

        from securefed.configio import from_dict
        from securefed.runtime.config import RunConfig

        cfg = from_dict(RunConfig, yaml.safe_load(welcome["config_yaml"]))
        if threads:
            import torch

            torch.set_num_threads(threads)
        return LMHolder(holder_id, cfg, shard=shard)
    raise ValueError(f"unknown workload {welcome.get('workload')!r}")


def run(args: argparse.Namespace) -> int:
    from securefed.runtime.netclient import EXIT, NetClient
    from securefed.secagg import SecAggConfig
    from securefed.transport.logjson import setup_logging

    setup_logging(json_lines=args.log_json, level=args.net_log_level)
    try:
        floor = SecAggConfig(ring_bits=args.min_ring_bits, threshold_fraction=args.min_threshold_fraction,
                             neighbours=None if args.min_graph == "complete" else 0)
        client = NetClient(args.id, pki=args.pki, target=args.server, state_dir=args.state,
                           server_name=args.server_name, max_failures=args.max_failures, policy=floor,
                           workload_factory=lambda hid, welcome: make_workload(hid, welcome, args.shard, args.torch_threads))
    except (ValueError, TypeError, FileNotFoundError, PermissionError) as e:
        print(f"securefed client: {e}", file=sys.stderr)
        return EXIT["usage"]
    return client.run()


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="securefed")
    register(_p.add_subparsers())
    sys.exit(run(_p.parse_args(["client", *sys.argv[1:]])))
