"""A data holder's own configuration (protocols/federation.md §5): its data, floors, budget, hardware.

Written by the holder's operator beside its key material and never taken from the coordinator:
nothing the coordinator sends can choose which local files a holder reads, weaken its secure-
aggregation or privacy floor, or raise its ε cap. ``load_holder_config`` refuses unknown keys and
wrong types (configio) and :func:`check_holder_config` refuses a config that contradicts itself or
names files that do not exist — one clear error before anything is sent.

    holder_id: 3
    state_dir: /srv/securefed/state            # own ledger, release records, optimizer state (0700)
    pki: /srv/securefed/pki                    # keygen layout: holders/3/{cert,key,identity.key,ca.pem}, roster.yaml
    server: coordinator.example.org:50051
    data: {source: /data/notes, tokenizer: /srv/securefed/tokenizer.json, seq_len: 2048}
    policy: {aggregation: [secagg], min_ring_bits: 32, privacy_mode: distributed,
             min_noise_multiplier: 0.8, epsilon_cap: 8.0, delta: 1.0e-6}
    hardware: {accelerator: cuda, precision: bf16-mixed}
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from securefed.configio import ConfigError, from_dict, load_yaml, override
from securefed.secagg import SecAggConfig
from securefed.training.data import DataConfig
from securefed.training.config import DPSGDConfig   # torch-free (the trainer re-exports it)

__all__ = ["CkksFloor", "HolderPolicy", "HolderHardware", "HolderConfig", "HolderConfigError", "load_holder_config",
           "check_holder_config", "PRIVACY_ORDER"]

# a floor of "central" accepts central or distributed; "distributed" accepts only distributed
PRIVACY_ORDER = {"none": 0, "central": 1, "distributed": 2}


class HolderConfigError(ValueError):
    """The holder's own configuration is invalid, contradicts itself or names missing files."""


@dataclass(frozen=True)
class CkksFloor:
    """The weakest CKKS settings (the Welcome's ``ckks``, protocols/ckks.md §2–§5) this holder accepts under
    ``ckks+secagg``: any key holder with the coordinator decrypts what is routed there, so the routing, the
    decryptor's checks and the flooding are the holder's to fix, not the coordinator's (federation.md H1).
    An audit's coordinator sent min_survivors 1 and the honest decryptor released one holder's CKKS part."""

    min_survivors: int = 2                    # D2: a decryption sums at least this many uploads
    verify_aggregate: bool = True             # D3: the decryptor re-sums the signed uploads itself
    min_flood_bits: int = 40                  # §4.3: flooding σ_f = 2^(flood − scale_bits) against key recovery
    max_tensor_elements: int | None = 4096    # §2: the largest tensor it lets go to CKKS (None: any)
    key_scope: Literal["cohort", "roster"] = "cohort"   # §3.1: "roster" also accepts keys held by the whole roster
    max_key_rounds: int = 1                   # §3.4: rotate_key_every_rounds at most this

    def __post_init__(self) -> None:
        if self.min_survivors < 2:
            raise ValueError("policy.ckks.min_survivors must be >= 2: a decryption of one upload is that holder's update")
        if not 0 <= self.min_flood_bits <= 200 or self.max_key_rounds < 1:
            raise ValueError("policy.ckks.min_flood_bits must be in [0, 200] and max_key_rounds >= 1")
        if self.max_tensor_elements is not None and self.max_tensor_elements < 0:
            raise ValueError("policy.ckks.max_tensor_elements must be >= 0 or null")
        if self.key_scope not in ("cohort", "roster"):
            raise ValueError("policy.ckks.key_scope must be 'cohort' or 'roster'")

    def refusal(self, ckks, tensors) -> str | None:
        """Why the run's RoutingPolicy ``ckks`` is below this floor (None: it is not). ``tensors``: the
        (name, numel) pairs the run's route plan sends to CKKS. Public numbers only."""
        if ckks.min_survivors < self.min_survivors:
            return (f"CKKS min_survivors {ckks.min_survivors} is below this holder's floor {self.min_survivors} "
                    "(a decryptor could release a sum of that few updates)")
        if self.verify_aggregate and not ckks.verify_aggregate:
            return "CKKS verify_aggregate is off: the decryptor would decrypt whatever sum the coordinator hands it"
        if ckks.decrypt_flood_bits < self.min_flood_bits:
            return f"CKKS decrypt_flood_bits {ckks.decrypt_flood_bits} is below this holder's floor {self.min_flood_bits}"
        if self.key_scope == "cohort" and ckks.key_scope != "cohort":
            return "CKKS key_scope 'roster' is wider than this holder's floor 'cohort'"
        if ckks.rotate_key_every_rounds > self.max_key_rounds:
            return (f"CKKS keys kept {ckks.rotate_key_every_rounds} rounds, above this holder's floor of "
                    f"{self.max_key_rounds}")
        big = [(n, k) for n, k in tensors if self.max_tensor_elements is not None and k > self.max_tensor_elements]
        if big:
            return (f"the run routes {len(big)} tensors above this holder's {self.max_tensor_elements} elements to CKKS "
                    f"(e.g. {big[0][0]}, {big[0][1]} elements)")
        return None


@dataclass(frozen=True)
class HolderPolicy:
    """The weakest settings this holder accepts (its floors) and its own ε budget."""

    aggregation: tuple[Literal["secagg", "ckks+secagg", "plain"], ...] = ("secagg", "ckks+secagg")
    min_ring_bits: int = 32
    min_threshold_fraction: float = 0.5
    # complete: SecAgg; auto: SecAgg+ at its O(log n) degree; an int d: SecAgg+ of degree at least d
    graph: Literal["complete", "auto"] | int = "complete"
    min_cohort: int = 3
    privacy_mode: Literal["none", "central", "distributed"] = "none"
    min_noise_multiplier: float = 0.0
    epsilon_cap: float | None = None
    delta: float | None = None    # None: the run's δ if at most 10⁻⁵ (recorded, then fixed); a larger δ needs it set here
    ckks: CkksFloor = field(default_factory=CkksFloor)   # under ckks+secagg (federation.md H1)
    # the initial model this holder trains (dp.md §13.4, H1): SHA-256 of θ0's little-endian float32 bytes, as the
    # run's summary.json (init_sha256) and report show it; None: whatever θ0 the run declares
    init_sha256: str | None = None

    def __post_init__(self) -> None:
        if self.init_sha256 is not None and (not isinstance(self.init_sha256, str) or len(self.init_sha256) != 64
                                             or any(c not in "0123456789abcdef" for c in self.init_sha256)):
            raise ValueError("policy.init_sha256 must be 64 lowercase hex digits (the run's summary.json init_sha256) "
                             "or null")
        if not self.aggregation or len(set(self.aggregation)) != len(self.aggregation):
            raise ValueError("policy.aggregation must list the accepted modes, each once")
        if not 16 <= self.min_ring_bits <= 32:
            raise ValueError("policy.min_ring_bits must be in [16, 32]")
        if not 0.5 <= self.min_threshold_fraction <= 1.0:
            raise ValueError("policy.min_threshold_fraction must be in [0.5, 1]")
        if isinstance(self.graph, int) and (isinstance(self.graph, bool) or self.graph < 2):
            raise ValueError("policy.graph: an int degree must be >= 2")
        if self.min_cohort < 1:
            raise ValueError("policy.min_cohort must be >= 1")
        if not (self.min_noise_multiplier >= 0 and math.isfinite(self.min_noise_multiplier)):
            raise ValueError("policy.min_noise_multiplier must be a finite number >= 0")
        if self.epsilon_cap is not None and not (self.epsilon_cap > 0 and math.isfinite(self.epsilon_cap)):
            raise ValueError("policy.epsilon_cap must be a finite number > 0 or null")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ValueError("policy.delta must be in (0, 1) or null")
        if self.epsilon_cap is not None and self.privacy_mode == "none":
            raise ValueError("policy.epsilon_cap needs a privacy floor (privacy_mode central or distributed): "
                             "without DP every round's epsilon is infinite and the holder would refuse them all")
        if self.min_noise_multiplier > 0 and self.privacy_mode == "none":
            raise ValueError("policy.min_noise_multiplier needs privacy_mode central or distributed")
        if "plain" in self.aggregation and self.privacy_mode == "distributed":
            raise ValueError("policy: distributed DP needs secure aggregation; do not accept aggregation 'plain'")

    def secagg_floor(self) -> SecAggConfig:
        degree = None if self.graph == "complete" else 0 if self.graph == "auto" else self.graph
        return SecAggConfig(ring_bits=self.min_ring_bits, threshold_fraction=self.min_threshold_fraction,
                            neighbours=degree)


@dataclass(frozen=True)
class HolderHardware:
    """Where this holder trains (its own choice; the coordinator sets only the training recipe)."""

    accelerator: Literal["auto", "cpu", "cuda"] = "auto"
    devices: int = 1
    precision: Literal["auto", "32-true", "bf16-mixed", "bf16-true", "16-mixed"] = "auto"
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"
    compile: bool = False
    torch_threads: int | None = None
    mask_threads: int | None = None    # threads expanding secure-aggregation masks while it trains (None: half the cores)
    # where w·Δ is clipped and rounded for secure aggregation (secagg.md §6.6): "auto" on the training GPU
    # when there is one, "device" on the training device whatever it is, "host" with numpy
    encode_on: Literal["auto", "device", "host"] = "auto"

    def __post_init__(self) -> None:
        if self.encode_on not in ("auto", "device", "host"):
            raise ValueError(f"hardware.encode_on must be 'auto', 'device' or 'host', got {self.encode_on!r}")
        if self.devices < 1 or (self.torch_threads is not None and self.torch_threads < 1):
            raise ValueError("hardware.devices and hardware.torch_threads must be >= 1")
        if self.mask_threads is not None and (isinstance(self.mask_threads, bool) or not isinstance(self.mask_threads, int)
                                              or not 1 <= self.mask_threads <= 1024):
            raise ValueError("hardware.mask_threads must be an int in [1, 1024]")


@dataclass(frozen=True)
class HolderConfig:
    holder_id: int
    state_dir: str
    data: DataConfig = field(default_factory=DataConfig)
    shard: int = 0                     # simulation: this holder's part of `data` split n_shards ways
    n_shards: int = 1
    data_seed: int = 0                 # the partition seed (simulation: the run's seed)
    policy: HolderPolicy = field(default_factory=HolderPolicy)
    dp_sgd: DPSGDConfig = field(default_factory=DPSGDConfig)   # record-level DP inside this holder
    hardware: HolderHardware = field(default_factory=HolderHardware)
    # deployment (securefed client): where the coordinator is and where this holder's keys are
    server: str = "127.0.0.1:50051"
    server_name: str | None = None
    pki: str | None = None
    max_failures: int = 20
    # the longest this holder waits for the coordinator's next stage message once welcomed (a round that does not
    # open, a stage that does not come) before it leaves with exit 6 (transport.md §6.4); above any stage deadline
    patience_s: float = 86400.0
    save_every: int = 1                # save the optimizer state every this many rounds (GBs per save at 1.3B); a
                                       # DP-SGD holder saves it at every release anyway (H7), and then not again
    # simulation and tests only: secrets from a seed (never with real data), simulated vanishing
    deterministic_secrets: bool = False
    secret_seed: int = 0
    dropout_rate: float = 0.0
    vanish_at: tuple[int, int] | None = None   # (round, stage): from there on this holder never answers again

    def __post_init__(self) -> None:
        if isinstance(self.holder_id, bool) or not 1 <= self.holder_id <= (1 << 31) - 1:
            raise ValueError("holder_id must be an int in [1, 2^31-1]")
        if not isinstance(self.state_dir, str) or not self.state_dir.strip():
            raise ValueError("state_dir must name a directory")
        if self.n_shards < 1 or not 0 <= self.shard < self.n_shards:
            raise ValueError(f"shard must be in [0, n_shards={self.n_shards})")
        # a deployed holder (n_shards 1) names exactly one path, its own; in a simulation shard i of n is holder i's
        # own path, so the list has one per holder (`securefed simulate --set data.holder_paths=[...]`, README)
        if self.data.holder_paths and len(self.data.holder_paths) != self.n_shards:
            raise ValueError("data.holder_paths: a holder names exactly one path of its own" if self.n_shards == 1 else
                             f"data.holder_paths lists {len(self.data.holder_paths)} path(s) for n_shards = {self.n_shards} "
                             f"holders: one path per holder"
                             + ("; a holder naming its own data (one path) removes shard and n_shards, which pick its share "
                                "of the starter config's stdlib corpus (`securefed keygen --holder-configs` writes them)"
                                if len(self.data.holder_paths) == 1 else ""))
        if self.dp_sgd.enabled and self.dp_sgd.unit == "group" and self.data.unit_field is None:
            # here, at config load, not after joining a run and reading the data (protocols/dp.md §10.2)
            raise ValueError("dp_sgd.unit=group needs data.unit_field: the JSONL field or Parquet column naming whom "
                             "each record is about (e.g. a patient id)")
        if not 0 <= self.dropout_rate < 1:
            raise ValueError("dropout_rate must be in [0, 1)")
        if self.save_every < 1:
            raise ValueError("save_every must be >= 1")
        if self.max_failures < 0:
            raise ValueError("max_failures must be >= 0")
        if not (isinstance(self.patience_s, (int, float)) and not isinstance(self.patience_s, bool)
                and 0 < self.patience_s <= 30 * 86400):
            raise ValueError("patience_s must be a number of seconds in (0, 2592000] (30 days)")


def load_holder_config(path: str | Path, overrides: tuple[str, ...] | list[str] = ()) -> HolderConfig:
    try:
        data = load_yaml(path)
        for o in overrides:
            override(data, o)
        return from_dict(HolderConfig, data)
    except ConfigError as e:
        raise HolderConfigError(f"holder config {path}: {e}") from None


def check_server_address(addr: object, what: str = "server") -> str:
    """``addr`` if it is HOST:PORT (a name, an IPv4 address or a bracketed IPv6 one, port 1-65535); HolderConfigError
    otherwise. A newcomer's ``--server localhost`` was taken, and the holder then retried a target gRPC could not
    parse for 20 minutes."""
    text = addr if isinstance(addr, str) else ""
    host, sep, port = text.rpartition(":")
    ok = bool(sep) and port.isascii() and port.isdigit() and 1 <= int(port) <= 65535 and bool(host) and not any(
        c.isspace() or c == "/" for c in host)
    if ok and ":" in host:    # IPv6 needs its brackets: [::1]:50051
        ok = host.startswith("[") and host.endswith("]") and len(host) > 2
    if not ok:
        raise HolderConfigError(f"{what} {addr!r} is not HOST:PORT (e.g. coordinator.example.org:50051, "
                                "127.0.0.1:50051 or [::1]:50051)")
    return text


def check_holder_config(cfg: HolderConfig, *, deployment: bool, simulation: bool = False) -> None:
    """Files this holder needs exist (before anything is sent); HolderConfigError otherwise."""
    if deployment:
        check_server_address(cfg.server)
        if not cfg.pki:
            raise HolderConfigError("pki: a deployed holder needs its key directory (securefed keygen layout)")
        d = Path(cfg.pki) / "holders" / str(cfg.holder_id)
        for f in (d / "cert.pem", d / "key.pem", d / "identity.key", Path(cfg.pki) / "roster.yaml"):
            if not f.is_file():
                raise HolderConfigError(f"missing key file {f}")
        if (cfg.deterministic_secrets or cfg.dropout_rate or cfg.vanish_at) and not simulation:
            raise HolderConfigError("deterministic_secrets, dropout_rate and vanish_at are for simulations only")
    if cfg.dp_sgd.enabled and cfg.dp_sgd.unit == "group" and cfg.data.unit_field is None:
        raise HolderConfigError("dp_sgd.unit=group needs data.unit_field: the JSONL field or Parquet column naming whom "
                                "each record is about (e.g. a patient id)")
    for p in cfg.data.holder_paths or ((cfg.data.source,) if cfg.data.source != "stdlib" else ()):
        if not Path(p).expanduser().exists():
            raise HolderConfigError(f"data path {p} does not exist")
    if cfg.data.tokenizer != "train" and not Path(cfg.data.tokenizer).expanduser().exists():
        raise HolderConfigError(f"tokenizer {cfg.data.tokenizer} does not exist")
    parent = Path(cfg.state_dir).expanduser().parent
    if not parent.is_dir():
        raise HolderConfigError(f"state_dir's parent {parent} does not exist")


def write_demo_holder_configs(outdir: str | Path, *, pki: str | Path, holders: int, server: str) -> list[Path]:
    """Starter configs for the demo preset's holders (shard i of the stdlib corpus): a template each
    holder's operator edits — its own data, floors and ε cap — never something the coordinator sends."""
    from securefed.configio import dump_yaml
    from securefed.runtime.config import load_run_config

    run = load_run_config(preset="demo")
    out = Path(outdir)
    paths = demo_holder_config_paths(out, holders=holders)   # all free, or nothing is written
    out.mkdir(parents=True, exist_ok=True)
    for h, path in enumerate(paths, start=1):
        cfg = HolderConfig(holder_id=h, state_dir=str((out / f"state-{h}").resolve()), data=run.data, shard=h - 1,
                           n_shards=holders, data_seed=run.seed, pki=str(Path(pki).resolve()), server=server)
        path.write_text("# this holder's own settings (protocols/federation.md §2): edit data, policy, hardware\n"
                        + dump_yaml(cfg))
    return paths


def demo_holder_config_paths(outdir: str | Path, *, holders: int) -> list[Path]:
    """OUTDIR/holder-<id>.yaml for ids 1..holders; FileExistsError if OUTDIR is a file or any of them exists
    (an operator's edited config is never overwritten), an OSError naming OUTDIR if it cannot be created.
    `securefed keygen` asks before it writes a key."""
    import errno
    import os

    out = Path(outdir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"--holder-configs {out} is a file, not a directory")
    if not out.exists():   # a folder that cannot be made fails here, not after the PKI is written
        top = out.absolute()
        while not top.exists():
            top = top.parent
        if not top.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(out))
        if not os.access(top, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(out))
    paths = [out / f"holder-{h}.yaml" for h in range(1, holders + 1)]
    taken = [str(p) for p in paths if p.exists()]
    if taken:
        raise FileExistsError(f"{', '.join(taken[:3])}{' ...' if len(taken) > 3 else ''} exist(s); keygen never "
                              "overwrites a holder's config: choose another --holder-configs folder")
    return paths
