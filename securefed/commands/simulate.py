"""`securefed simulate`: run a whole federation on this machine (the README's demo command)."""

from __future__ import annotations

import argparse
import sys

from securefed import jsonio
from securefed.commands import positive_int
from securefed.configio import ConfigError, dump_yaml


EPILOG = """exit status:
  0  the run finished (or --print-config / --list-presets printed); --resume of a run stopped after its
     summary.json: its report written, nothing else redone
  1  --backend grpc: the coordinator or a holder process failed unexpectedly or was killed (named, with its last
     words and its log in RUN_DIR/launch/): --resume continues the run
  2  nothing run: a bad config or --out, --resume without a checkpoint or under other settings, a model this
     host cannot hold, or a pre-flight privacy refusal (one message on stderr; nothing written); --backend
     grpc: also such a refusal by the coordinator or a holder process, in its own words
  4  the run directory cannot be written (disk full, read-only; the file is named): --resume once it can;
     or --resume of a checkpoint that cannot be read or does not match the run's privacy ledgers, or of a run
     directory in use by another process (--backend grpc: the coordinator's message, in its own words)
  5  the run stopped early: too few holders took part (too few joined or survived, or 3 rounds in a row
     aborted, or every round of the run aborted; summary.json "ended": "too_few"). Its rounds so far, ledger
     and report are written
  6  --backend ray: the --ray-address cannot be reached"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run a federated pre-training simulation on this machine",
                       description="Run holders, secure aggregation, DP accounting and the centralized baseline "
                                   "in one process. With no arguments: the embedded demo preset.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo", help="run preset (see --list-presets); default: demo")
    p.add_argument("--config", help="YAML file merged over the preset")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override one setting, e.g. --set federation.rounds=4 (repeatable)")
    p.add_argument("--out", help="run directory (default: runs/run-<UTC timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--backend", choices=("inproc", "grpc", "ray"), default="inproc",
                   help="inproc: every holder in this process (default); grpc: the coordinator and each holder as "
                        "separate processes on loopback with fresh mutual-TLS keys (the deployment code path); "
                        "ray: each holder a Ray actor, training in parallel, on this machine or a cluster "
                        "(pip install 'securefed[ray]')")
    p.add_argument("--threads-per-holder", type=positive_int, metavar="N",
                   help="torch threads of each holder's training (both backends; 1 makes runs bit-comparable)")
    ray = p.add_argument_group("backend ray", "where the holder actors run (not part of config.yaml: they do not "
                                              "change what the run computes; summary.json records them)")
    ray.add_argument("--ray-address", metavar="ADDR",
                     help="join the Ray cluster at ADDR (HOST:PORT, ray://HOST:PORT or auto); default: start Ray on "
                          "this machine for the run")
    ray.add_argument("--ray-cpus-per-holder", type=float, metavar="N",
                     help="CPUs each holder actor asks for (default 1, or an equal share when holders outnumber "
                          "the CPUs); its torch threads: --threads-per-holder, else max(1, floor(N))")
    ray.add_argument("--ray-gpus-per-holder", type=float, default=0.0, metavar="G",
                     help="GPUs each holder asks for: a fraction shares one GPU (0.125: 8 holders per GPU), "
                          "a whole number gives each its own (default 0)")
    ray.add_argument("--ray-object-store-mb", type=int, default=512, metavar="MB",
                     help="object store size when Ray starts here (default 512)")
    ray.add_argument("--ray-dashboard", action="store_true",
                     help="start Ray's dashboard when Ray starts here (needs pip install 'ray[default]')")
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
    why = _host_memory_refusal(cfg)
    if why:
        print(f"securefed simulate: {why}", file=sys.stderr)
        return 2
    if args.resume and not args.out:
        print("securefed simulate: --resume needs --out RUN_DIR", file=sys.stderr)
        return 2
    out = args.out or str(default_run_dir())
    try:
        check_out_dir(out, resume=args.resume, resolved=to_dict(cfg), runs_baseline=bool(cfg.baseline))
    except RunDirError as e:
        print(f"securefed simulate: {e}", file=sys.stderr)
        return 2
    from securefed.runtime.rundir import resume_hint

    args.resume_hint = lambda: resume_hint(out, f"with the same arguments and --out {out} --resume",   # (securefed.cli)
                                           runs_baseline=bool(cfg.baseline))
    from securefed.federation.coordinator import StateError
    from securefed.federation.simulation import Simulation

    try:
        ray_options = _ray_options(args)
    except ValueError as e:
        print(f"securefed simulate: {e}", file=sys.stderr)
        return 2
    try:
        sim = Simulation(cfg, out, resume=args.resume, progress=not args.quiet, backend=args.backend,
                         threads_per_holder=args.threads_per_holder, ray_options=ray_options)
    except ConnectionError as e:      # ray_cluster.RayUnreachable: the cluster address cannot be reached
        print(f"securefed simulate: {e}", file=sys.stderr)
        return 6
    except StateError as e:           # --resume: a checkpoint unreadable, or not matching its ledgers
        print(f"securefed simulate: {e}", file=sys.stderr)
        return 4
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"securefed simulate: {e}", file=sys.stderr)
        return 2
    except OSError as e:   # the run directory cannot be made (past check_out_dir: a race, a full disk): nothing run
        from securefed.outdir import os_error_text

        print(f"securefed simulate: {os_error_text(e)}", file=sys.stderr)
        return 2
    from securefed.federation.launch import LaunchError
    from securefed.privacy.ledger import LedgerWriteError
    from securefed.runtime.rundir import WriteError

    try:
        summary = sim.run()
    except (WriteError, LedgerWriteError) as e:   # as `securefed server`: one error, never a traceback (SYS-27)
        print(f"securefed simulate: stopped: {e}. Once {out} can be written, {args.resume_hint()}", file=sys.stderr)
        return 4
    except StateError as e:
        print(f"securefed simulate: {e}", file=sys.stderr)
        return 4
    except LaunchError as e:   # --backend grpc: a coordinator or holder process refused or failed (a review: traceback)
        return _launch_failed(e, args.resume_hint)
    print(jsonio.dumps(summary, indent=2))   # strict: "inf", never Infinity
    from securefed.report.render import where_line

    print(where_line(out, sim.report_written))
    if cfg.deterministic_secrets:   # runtime/parties.py: every noise sample and mask from the seed
        print(f"securefed simulate: WARNING: NOT private: for tests — deterministic_secrets derives every noise sample "
              f"and mask from the configuration's seed ({cfg.seed})", file=sys.stderr)
    if summary.get("ended") == "too_few":   # as `securefed server` (transport.md §10): never a quiet exit 0
        print(f"securefed simulate: the run stopped after {summary.get('rounds', 0)} of {cfg.federation.rounds} rounds: "
              "too few holders took part (their reasons are in the log above and in the report)", file=sys.stderr)
        return 5
    return 0


def _launch_failed(e, resume_hint) -> int:
    """--backend grpc: one message for a process of the local federation that refused or failed — its own words, its
    exit status and its log (launch.LaunchError) — and simulate's exit status: the process's own 2 (its configuration)
    or 4 (its run or state directory: unreadable, in use, or not writable), whose meanings are simulate's own; else 1
    (it failed unexpectedly or was killed: the run continues from its last checkpoint)."""
    code = e.code if e.code in (2, 4) else 1
    tail = f"; {resume_hint()}" if code == 1 else ""
    print(f"securefed simulate: {e}{tail}", file=sys.stderr)
    return code


def _host_memory_refusal(cfg) -> str | None:
    """One clear error, before anything is built, for a model this host cannot hold (e.g. --set
    model.preset=7b on a laptop) — instead of the kernel's OOM kill minutes later. Torch-free: a GPU is
    assumed present when the NVIDIA device node exists."""
    import os

    from securefed.training.memory import available_host_bytes, host_bytes

    avail = available_host_bytes()
    if avail is None:
        return None
    vocab = cfg.data.vocab_size if cfg.data.tokenizer == "train" else 0   # a loaded tokenizer: layers only (a floor)
    acc = cfg.train.accelerator
    cpu = acc == "cpu" or (acc == "auto" and not os.path.exists("/dev/nvidiactl"))
    need = host_bytes(cfg.model.preset, vocab_size=vocab, n_holders=cfg.federation.n_holders, cpu_training=cpu)
    if need <= avail:
        return None
    return (f"model.preset={cfg.model.preset} with {cfg.federation.n_holders} holders needs at least "
            f"{need / 2**30:.1f} GiB of host memory {'(training on the CPU) ' if cpu else ''}and "
            f"{avail / 2**30:.1f} GiB are available: choose a smaller model.preset or fewer holders, or run on a "
            "machine with a GPU (see the README's per-GPU memory table)")


def _ray_options(args: argparse.Namespace):
    """RayOptions from the --ray-* flags (None for other backends; they are refused there)."""
    given = [f for f in ("ray_address", "ray_cpus_per_holder") if getattr(args, f) is not None]
    given += ["ray_gpus_per_holder"] if args.ray_gpus_per_holder else []
    given += ["ray_dashboard"] if args.ray_dashboard else []
    given += ["ray_object_store_mb"] if args.ray_object_store_mb != 512 else []
    if args.backend != "ray":
        if given:
            raise ValueError(f"--{given[0].replace('_', '-')} needs --backend ray")
        return None
    from securefed.federation.ray_cluster import RayOptions

    return RayOptions(address=args.ray_address, cpus_per_holder=args.ray_cpus_per_holder,
                      gpus_per_holder=args.ray_gpus_per_holder, object_store_mb=args.ray_object_store_mb,
                      dashboard=args.ray_dashboard)
