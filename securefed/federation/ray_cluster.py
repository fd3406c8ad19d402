"""`securefed simulate --backend ray`: where the holder actors run, and one federation on them.

    RayOptions            --ray-address, --ray-cpus-per-holder, --ray-gpus-per-holder, --ray-object-store-mb,
                          --ray-dashboard (command line only: they choose where holders run, never what the
                          run computes, so they are not part of config.yaml; summary.json records them)
    connect(options, n)   before RUN_DIR exists: start Ray on this machine (no address) or join the
                          cluster at the address, and check that n holders fit at once; otherwise one
                          clear error (RayUnreachable, RayResourcesError, RayUnavailable)
    run_ray(...)          one actor per holder (ray.py), the Coordinator in this driver process

Ray is an optional extra (`pip install 'securefed[ray]'`); nothing here imports it at module import.

Resources. A holder actor asks for ``cpus_per_holder`` CPUs and ``gpus_per_holder`` GPUs (a fraction
below 1 lets several holders share one GPU — 0.125 puts 8 on one; a whole number gives each its own
GPUs). Ray schedules on these logical amounts; the holder's torch uses ``--threads-per-holder`` threads,
else ⌊cpus_per_holder⌋ (at least 1). Without ``--ray-cpus-per-holder`` a holder asks for 1 CPU, or, when
the holders outnumber the cluster's CPUs, an equal share of them (8 holders on 2 cores: 0.25 each).
The check is that the cluster can hold every holder at once (the first round waits for all of them):
holders that could never be placed would leave the run waiting for them.

One holder per GPU (``--ray-gpus-per-holder 1``): Ray gives each actor its own GPU and sets its
CUDA_VISIBLE_DEVICES to that one id, so every holder's trainer sees one device (cuda:0) and eight holders
fill an 8-GPU host. ``check_placement`` refuses, before Ray starts, a request that contradicts the run's
training settings (GPUs asked for a CPU trainer, a CUDA trainer given none, whole GPUs a holder would not
use); ``connect`` then checks that n_holders × (CPUs, GPUs) fit the cluster at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
import sys
from dataclasses import dataclass

__all__ = ["RayOptions", "RayUnavailable", "RayUnreachable", "RayResourcesError", "RaySession", "connect",
           "check_placement", "run_ray", "keep_sigterm", "shutdown"]

log = logging.getLogger("securefed.channel.ray")

_RESOURCE_UNIT = 1e-4     # Ray counts CPUs and GPUs in units of 1/10000 (a smaller share is refused at actor creation)


class RayUnavailable(ValueError):
    """Ray is not installed, or refused to start here (its message follows)."""


class RayUnreachable(ConnectionError):
    """The cluster address cannot be reached."""


class RayResourcesError(ValueError):
    """The cluster cannot hold every holder at once with the resources asked per holder."""


@dataclass(frozen=True)
class RayOptions:
    address: str | None = None              # None: start Ray here; "auto", "HOST:PORT" or "ray://HOST:PORT": join
    cpus_per_holder: float | None = None    # None: 1, or an equal share when holders outnumber the CPUs
    gpus_per_holder: float = 0.0            # < 1: a share of one GPU; >= 1: whole GPUs
    object_store_mb: int = 512              # local start only (Ray's default, 30 % of RAM, is too much here)
    dashboard: bool = False                 # local start only; needs `pip install 'ray[default]'`
    connect_timeout: float = 10.0           # seconds to reach HOST:PORT before giving up

    def __post_init__(self) -> None:
        c, g = self.cpus_per_holder, self.gpus_per_holder
        if c is not None and (isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c < 1e6):
            raise ValueError(f"--ray-cpus-per-holder must be a number > 0, got {c!r}")
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not 0 <= g < 1e6:
            raise ValueError(f"--ray-gpus-per-holder must be a number >= 0, got {g!r}")
        for flag, v, least in (("cpus", c, "at least"), ("gpus", g, "0 or at least")):   # Ray refuses a smaller
            if v and v < _RESOURCE_UNIT:                                                  # share at actor creation
                raise ValueError(f"--ray-{flag}-per-holder must be {least} {_RESOURCE_UNIT:g} (Ray's smallest share of "
                                 f"a resource), got {v:g}")
        if g > 1 and g != int(g):   # Ray's rule: a fraction of one GPU, or whole GPUs
            raise ValueError(f"--ray-gpus-per-holder must be at most 1 or a whole number, got {g}")
        if not 80 <= self.object_store_mb <= 1 << 20:
            raise ValueError(f"--ray-object-store-mb must be in [80, 1048576], got {self.object_store_mb}")
        if self.address is not None and not self.address.strip():
            raise ValueError("--ray-address must not be empty")
        if not 0 < self.connect_timeout <= 600:
            raise ValueError("connect_timeout must be in (0, 600] seconds")


@dataclass(frozen=True)
class RaySession:
    """What connect() found: the resources each holder actor asks for, and whether Ray was started here."""

    options: RayOptions
    cpus_per_holder: float
    gpus_per_holder: float
    started_here: bool
    cluster: dict                          # {"nodes": n, "CPU": total, "GPU": total}
    dashboard_url: str | None = None

    def record(self) -> dict:
        """What summary.json keeps of it (``ray``)."""
        return {"address": self.options.address, "cpus_per_holder": self.cpus_per_holder,
                "gpus_per_holder": self.gpus_per_holder, "started_here": self.started_here, **self.cluster}


def _local_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:      # not Linux
        return os.cpu_count() or 1


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:           # no torch CUDA runtime: no GPUs for Ray either
        return 0


def holders_that_fit(nodes: list[dict], cpus: float, gpus: float) -> int:
    """How many actors of (cpus, gpus) the nodes hold at once. A fractional GPU request is packed
    within one GPU (Ray never splits an actor over two), so a GPU holds ⌊1/g⌋ of them."""
    fit = 0
    for res in nodes:
        k = math.floor(res.get("CPU", 0.0) / cpus + 1e-9)
        if gpus > 0:
            n_gpus = math.floor(res.get("GPU", 0.0) + 1e-9)
            k = min(k, n_gpus * math.floor(1 / gpus + 1e-9) if gpus <= 1 else math.floor(n_gpus / gpus + 1e-9))
        fit += max(k, 0)
    return fit


def _check_fit(nodes: list[dict], cpus: float, gpus: float, n_holders: int, where: str) -> None:
    fit = holders_that_fit(nodes, cpus, gpus)
    if fit < n_holders:
        total_cpu = sum(r.get("CPU", 0.0) for r in nodes)
        total_gpu = sum(r.get("GPU", 0.0) for r in nodes)
        raise RayResourcesError(
            f"{where} ({len(nodes)} node(s), {total_cpu:g} CPUs, {total_gpu:g} GPUs) can hold {fit} of the "
            f"{n_holders} holders at {cpus:g} CPU and {gpus:g} GPU each; lower --ray-cpus-per-holder / "
            f"--ray-gpus-per-holder or use a larger cluster")


def check_placement(train, gpus_per_holder: float) -> None:
    """The GPUs each holder actor asks for must be what its trainer (``train``: TrainConfig) will use."""
    g = float(gpus_per_holder)
    if train.accelerator == "cpu" and g > 0:
        raise RayResourcesError(f"--ray-gpus-per-holder {g:g} reserves GPUs, but train.accelerator=cpu never uses "
                                "them; drop the flag or set train.accelerator to auto or cuda")
    if train.accelerator == "cuda" and g == 0:
        raise RayResourcesError("train.accelerator=cuda needs --ray-gpus-per-holder > 0: Ray hides every GPU from "
                                "an actor that asks for none (1 puts one holder on each GPU)")
    if g >= 1 and int(g) != train.devices:
        raise RayResourcesError(f"--ray-gpus-per-holder {g:g} gives each holder {g:g} whole GPU(s), but its trainer "
                                f"uses train.devices={train.devices}; make them equal")
    if train.devices > 1 and g < train.devices:
        raise RayResourcesError(f"train.devices={train.devices}: each holder needs --ray-gpus-per-holder "
                                f"{train.devices}")


def _probe(address: str, timeout: float) -> None:
    """A TCP connection to HOST:PORT first: Ray itself retries an unreachable address for minutes."""
    hostport = address.split("://", 1)[-1]
    host, sep, port = hostport.rpartition(":")
    if not sep or not port.isdigit():
        raise RayUnreachable(f"--ray-address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise RayUnreachable(f"cannot reach the Ray cluster at {address}: {e}") from None


@contextlib.contextmanager
def keep_sigterm():
    """This process's SIGTERM handler as it was before the block, put back after it (main thread only).

    Why: ``ray.init`` installs Ray's own handler (``sys.exit(15)``, then its node's: kill Ray's processes and
    ``sys.exit(1)``), and ``ray.shutdown`` leaves SIGTERM at the kernel's default (terminate) while Python still
    names the old handler. The `securefed simulate` driver kept either for the rest of the run: a SIGTERM
    between Ray's start and the rounds, or during the centralized baseline and the report after them, ended it
    with exit 1, 15 or -15 and no line, where cli.py promises 143 and "interrupted ...; --resume"
    (tests/federation/test_ray.py::test_ray_leaves_the_drivers_sigterm_handler_as_it_found_it). Ray started
    here is still ended at exit: its atexit handler kills its processes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if saved is not None:     # None: a handler not installed from Python, which cannot be put back
            signal.signal(signal.SIGTERM, saved)     # re-installed in the kernel too, where shutdown reset it


def shutdown() -> None:
    """``ray.shutdown()``, leaving this process's SIGTERM handler as it was (keep_sigterm)."""
    import ray

    with keep_sigterm():
        ray.shutdown()


@contextlib.contextmanager
def _bounded_join(timeout: float):
    """Joining an address: one attempt of ``timeout`` seconds to reach its GCS. Ray's own default is 20 attempts
    of 30 s each, so an address that accepts a TCP connection but does not answer as a Ray head (another
    service, a head that is stuck) held the command for ~12 minutes of C++ warnings before any error.
    RAY_* variables set by the user are kept; this process's environment is restored afterwards. Wrap the
    first ``import ray`` as well as ``ray.init``: the connect timeout is a C++ setting read at import."""
    bounds = {"RAY_gcs_server_port_wait_time_s": "1", "RAY_py_gcs_connect_timeout_s": str(math.ceil(timeout))}
    set_here = [k for k in bounds if k not in os.environ]
    os.environ.update({k: bounds[k] for k in set_here})
    try:
        yield
    finally:
        for k in set_here:
            os.environ.pop(k, None)


def connect(options: RayOptions, *, n_holders: int, train=None) -> RaySession:
    """Start or join Ray and check that ``n_holders`` actors fit; call before the run directory exists.
    An already initialised Ray in this process (tests, notebooks) is used as it is. ``train`` (the run's
    TrainConfig): checked against the GPUs asked per holder first (check_placement)."""
    if train is not None:
        check_placement(train, options.gpus_per_holder)
    first_import = "ray" not in sys.modules
    try:
        # Ray's C++ settings (RAY_py_gcs_connect_timeout_s among them) are read once, when ray is first imported:
        # the join's bound must be in the environment by then, or Ray's own 30 s applies (a review measured 47 s
        # for an address that never answers, against the 10 s promised; now ≈ 20 s: Ray's two 5 s probes + 10 s)
        with _bounded_join(options.connect_timeout) if options.address is not None else contextlib.nullcontext():
            import ray
    except ImportError:
        raise RayUnavailable("--backend ray needs Ray: pip install 'securefed[ray]'") from None
    if options.address is not None and not first_import:
        log.info("Ray was imported before the join: its own connect timeout (30 s) applies, not %g s",
                 options.connect_timeout)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")      # no usage reports from simulations
    gpus, started_here, url = float(options.gpus_per_holder), False, None
    if ray.is_initialized():
        where = "the running Ray instance"
    elif options.address is None:
        where = "this machine"
        cores, n_gpus = _local_cores(), _local_gpus()
        local = [{"CPU": float(cores), "GPU": float(n_gpus)}]
        _check_fit(local, _cpus(options, local, n_holders), gpus, n_holders, where)   # before Ray's ~10 s start
        try:
            with keep_sigterm():
                ctx = ray.init(num_cpus=cores, num_gpus=n_gpus, object_store_memory=options.object_store_mb << 20,
                               include_dashboard=options.dashboard, logging_level=logging.WARNING)
        except Exception as e:   # Ray raises bare Exceptions (e.g. the dashboard's missing packages)
            raise RayUnavailable(f"Ray did not start on this machine: {e}") from None
        started_here, url = True, getattr(ctx, "dashboard_url", None)
    else:
        where = f"the Ray cluster at {options.address}"
        if options.address != "auto":
            _probe(options.address, options.connect_timeout)
        try:
            with _bounded_join(options.connect_timeout), keep_sigterm():
                ctx = ray.init(address=options.address, logging_level=logging.WARNING)
        except Exception as e:
            hint = ("" if os.environ.get("RAY_AUTH_MODE") else " (a cluster with token authentication, Ray's default "
                    "since 2.5x, also needs RAY_AUTH_MODE=token and its token in this process's environment)")
            raise RayUnreachable(f"cannot join the Ray cluster at {options.address}: {e}{hint}") from None
        url = getattr(ctx, "dashboard_url", None)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    cpus = _cpus(options, nodes, n_holders)
    try:
        _check_fit(nodes, cpus, gpus, n_holders, where)
    except RayResourcesError:
        if started_here or options.address is not None:
            shutdown()
        raise
    cluster = {"nodes": len(nodes), "CPU": sum(r.get("CPU", 0.0) for r in nodes),
               "GPU": sum(r.get("GPU", 0.0) for r in nodes)}
    log.info("Ray: %s, %d node(s), %g CPUs, %g GPUs; %g CPU / %g GPU per holder", where, cluster["nodes"],
             cluster["CPU"], cluster["GPU"], cpus, gpus)
    return RaySession(options, cpus, gpus, started_here, cluster, url or None)


def _cpus(options: RayOptions, nodes: list[dict], n_holders: int) -> float:
    """The CPUs a holder asks for: as given, else 1 — or an equal share when holders outnumber the CPUs."""
    if options.cpus_per_holder is not None:
        return float(options.cpus_per_holder)
    total = sum(r.get("CPU", 0.0) for r in nodes)
    return min(1.0, math.floor(100 * total / n_holders) / 100) or 0.01   # 1/100 CPU: Ray's resolution is 1e-4


def run_ray(cfg, rd, configs: dict, *, session: RaySession, data, roster, identity, progress, resume: bool,
            stop_after_round: int | None, preflight=None) -> dict:
    """One holder actor per HolderConfig, the Coordinator here; the summary (or {"stopped_after_round"}).
    The coordinator's options are the networked deployment's: the run's stage deadlines (``network.*``),
    at least t_min live holders to open a round, a stop after ``network.max_aborted_rounds`` aborts."""
    import ray

    from securefed.federation.coordinator import Coordinator, CoordinatorOptions
    from securefed.federation.launch import signals_raise
    from securefed.federation.ray import RayChannel, start_holders
    from securefed.federation.ray_progress import RoundWatch
    from securefed.federation.stages import Deadlines

    net, cohort = cfg.network, cfg.federation.cohort_size
    secure = cfg.aggregation.mode != "plain"
    min_holders = net.min_holders or (cfg.aggregation.secagg.thresholds(cohort).min_survivors
                                      if secure and cohort >= 3 else 1)
    options = CoordinatorOptions(deadlines=Deadlines.from_config(net), min_holders=min_holders,
                                 max_aborted_rounds=net.max_aborted_rounds, backend="ray")
    watch = RoundWatch(sorted(configs), rounds=cfg.federation.rounds, progress=progress)
    channel = None
    # SIGTERM / SIGHUP raise SystemExit here, as under run_grpc, so that the finally below ends the actors and
    # the Ray it started: Ray's own SIGTERM handler aborted this process (exit -6), and a SIGHUP (terminal
    # closed) left Ray's per-node agents running with no parent
    with signals_raise():
        try:
            actors = start_holders(configs, cpus=session.cpus_per_holder, gpus=session.gpus_per_holder,
                                   run_token=f"{rd.root.name}-{os.urandom(3).hex()}")
            channel = RayChannel(actors, join_timeout=net.join, watch=watch)
            channel.announce_start()     # the actors import while the coordinator prepares: say so now
            if session.dashboard_url:
                progress.print(f"Ray dashboard: http://{session.dashboard_url}")
            coord = Coordinator(cfg, channel, rd, data=data, roster=roster, identity=identity, options=options,
                                progress=progress, resume=resume, stop_after_round=stop_after_round,
                                preflight=preflight)
            summary = coord.run()
        finally:
            if channel is not None:
                channel.close()
            if session.started_here:
                shutdown()
    if "stopped_after_round" not in summary:
        # holders out of the run for good (dead, not started by the join deadline, refused the welcome), with why:
        # said in the log as it happened, and kept here (as the gRPC launcher keeps launch/exit_codes.json)
        summary["ray"] = dict(session.record(), object_store_mb=session.options.object_store_mb,
                              dashboard=session.options.dashboard,
                              holders_lost={str(h): why for h, why in sorted(channel.gone.items())})
    return summary
