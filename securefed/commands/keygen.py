"""`securefed keygen DIR --holders N`: a demo CA, server and holder certificates, identity keys, roster.

For a real federation, see protocols/transport.md §7.3: each institution generates its own key pair
and certificate request; the federation's CA (kept offline) signs them; only public keys and
certificates are exchanged, never a private key.
"""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keygen", help="create a demo PKI (CA, server/holder certificates, identity keys, roster)",
                       description="Writes DIR/ca.pem, DIR/server/, DIR/holders/<id>/ and DIR/roster.yaml with "
                                   "private files 0600 and directories 0700. Never overwrites existing keys. "
                                   "Exit status: 0 written, 2 bad arguments, DIR not empty, a holder config already in OUTDIR, or DIR "
                                   "not writable (nothing is written).")
    p.add_argument("dir", metavar="DIR", help="output directory (must not exist or be empty)")
    p.add_argument("--holders", type=int, required=True, metavar="N", help="number of data holders (ids 1..N)")
    p.add_argument("--server-name", action="append", default=[], metavar="NAME",
                   help="extra DNS name or IP for the server certificate (localhost and 127.0.0.1 are always in)")
    p.add_argument("--holder-configs", metavar="OUTDIR",
                   help="also write a starter holder config per holder (OUTDIR/holder-<id>.yaml) for the demo preset: "
                        "shard i of the stdlib corpus, state in OUTDIR/state-<id>; each holder edits its own copy "
                        "(its data, floors, epsilon cap) before running `securefed client --config`")
    p.add_argument("--server", default="127.0.0.1:50051", help="coordinator HOST:PORT written into the holder configs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from securefed.federation.holder_config import check_server_address, demo_holder_config_paths, write_demo_holder_configs
    from securefed.transport.pki import make_demo_pki

    try:
        if args.holder_configs:
            check_server_address(args.server, "--server")
        if args.holder_configs and args.holders > 0:   # every refusal before the first key is written
            demo_holder_config_paths(args.holder_configs, holders=args.holders)
        lay = make_demo_pki(args.dir, holders=args.holders, server_names=tuple(args.server_name))
        if args.holder_configs:
            paths = write_demo_holder_configs(args.holder_configs, pki=lay.root, holders=args.holders,
                                              server=args.server)
            print(f"holder configs: {', '.join(str(p) for p in paths)}")
    except (ValueError, TypeError, OSError) as e:   # FileExistsError is an OSError
        why = f"cannot write {e.filename}: {e.strerror}" if isinstance(e, OSError) and e.filename and e.strerror else e
        print(f"securefed keygen: {why}", file=sys.stderr)
        return 2
    print(f"demo PKI for {args.holders} holders in {lay.root} (roster: {lay.roster}); "
          "the CA key in ca.key is for demos only: keep a real federation's CA offline")
    # the key a holder pins to check a run's ledgers (`securefed verify --coordinator-key`, dp.md §7): it must come
    # from here, out of band, never from the run directory the coordinator writes (keys.json)
    from securefed.transport.pki import load_identity

    print(f"coordinator key: {load_identity(lay.server_identity).public_bytes.hex()} (Ed25519, signs the run's privacy "
          "ledgers): give it to each holder with the roster, out of band, for `securefed verify RUN_DIR "
          "--coordinator-key HEX`")
    return 0


if __name__ == "__main__":
    _p = argparse.ArgumentParser(prog="securefed")
    register(_p.add_subparsers())
    _a = _p.parse_args(["keygen", *sys.argv[1:]])
    sys.exit(run(_a))
