"""The fully typed run configuration of `securefed simulate` / `securefed server`.

It composes the lower layers' own configs (data, inner training, outer optimizer, secure aggregation,
CKKS routing, DP) and adds what only a run has (seed, federation shape, baseline). Loaded from YAML
presets in securefed/presets/ plus ``--config FILE`` plus ``--set section.key=value`` overrides, in
that order; unknown keys anywhere are an error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Literal

# Only config modules here: this file must import without torch, transformers, lightning or tenseal,
# so that `securefed simulate` refuses a bad config at once (tests/runtime/test_config_fast.py).
from securefed.ckks.routing import RoutingPolicy
from securefed.configio import ConfigError, from_dict, load_yaml, override, parse_yaml
from securefed.privacy.config import DPConfig
from securefed.secagg.config import SecAggConfig
from securefed.training.config import OuterConfig, TrainConfig, get_preset
from securefed.training.data.config import DataConfig, eval_split_for

__all__ = ["ModelSection", "FederationConfig", "AggregationConfig", "NetworkConfig", "LoggingConfig", "RunConfig",
           "load_run_config", "list_presets", "closest_preset"]


@dataclass(frozen=True)
class ModelSection:
    preset: str = "tiny"
    # θ0 from a saved model (a directory written by save_pretrained: a run's RUN_DIR/model) instead of the seed's
    # random init, for the federated run and its centralized baseline alike. It must be PUBLIC: the run's privacy
    # guarantees cover the holders' data, not what this checkpoint learnt from (protocols/dp.md §13). Its tokenizer,
    # when it has one, must be the run's (checked when the data is loaded).
    init_from: str | None = None

    def __post_init__(self) -> None:
        get_preset(self.preset)  # unknown preset -> one clear ValueError
        if self.init_from is not None:
            if not isinstance(self.init_from, str) or not self.init_from.strip():
                raise ValueError("model.init_from must be the path of a saved model directory, or null")
            if not (Path(self.init_from).expanduser() / "model.safetensors").is_file():
                raise ValueError(f"model.init_from: {self.init_from} has no model.safetensors (a directory written "
                                 f"by save_pretrained, such as a run's RUN_DIR/model)")


@dataclass(frozen=True)
class FederationConfig:
    n_holders: int = 4
    rounds: int = 8
    clients_per_round: int | None = None            # None: every holder every round
    sampling: Literal["fixed", "poisson"] = "fixed"  # fixed-size cohort or Poisson(q = clients_per_round / n)
    weighting: Literal["uniform", "tokens"] = "tokens"
    eval_every: int = 1
    holder_local_steps: tuple[int, ...] = ()        # heterogeneity: per-holder K (default train.local_steps)
    holder_batch_sizes: tuple[int, ...] = ()        # heterogeneity: per-holder batch size
    dropout_rate: float = 0.0                       # simulated: a holder vanishes mid-protocol with this probability
    # save the model/outer state (coordinator) and each holder's optimizer state every this many rounds:
    # 1 makes a resume bit-identical; more saves 2-3 x P floats of writes per round (GBs at 1.3B parameters)
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        if self.n_holders < 1:
            raise ValueError("federation.n_holders must be >= 1")
        if self.rounds < 1:
            raise ValueError("federation.rounds must be >= 1")
        if self.clients_per_round is not None and not 1 <= self.clients_per_round <= self.n_holders:
            raise ValueError("federation.clients_per_round must be in [1, n_holders]")
        if self.eval_every < 1:
            raise ValueError("federation.eval_every must be >= 1")
        for name in ("holder_local_steps", "holder_batch_sizes"):
            vals = getattr(self, name)
            if vals and (len(vals) != self.n_holders or min(vals) < 1):
                raise ValueError(f"federation.{name} needs one value >= 1 per holder ({self.n_holders})")
        if not 0 <= self.dropout_rate < 1:
            raise ValueError("federation.dropout_rate must be in [0, 1)")
        if self.checkpoint_every < 1:
            raise ValueError("federation.checkpoint_every must be >= 1")

    @property
    def cohort_size(self) -> int:
        return self.clients_per_round or self.n_holders


@dataclass(frozen=True)
class AggregationConfig:
    mode: Literal["secagg", "plain", "ckks+secagg"] = "secagg"
    secagg: SecAggConfig = field(default_factory=SecAggConfig)
    ckks: RoutingPolicy = field(default_factory=RoutingPolicy)
    transcript: bool = False                         # write every byte the aggregator received


@dataclass(frozen=True)
class NetworkConfig:
    """The networked deployment (`securefed server`, `simulate --backend grpc`; protocols/transport.md §6.1):
    seconds each stage may take, the stream chunk size, and when the coordinator gives up."""

    join: float = 120.0                  # first round: wait for holders until none has newly come for this long
    train: float = 600.0                 # θ download + K local steps + encoding (stage PLAN)
    control: float = 60.0                # each small stage
    upload: float = 600.0                # a streamed update
    chunk_mib: float = 1.0               # stream chunk size (<= 4)
    min_holders: int | None = None       # holders needed to open a round (default: the cohort's t_min)
    max_aborted_rounds: int = 3          # consecutive aborted rounds before the coordinator stops (exit 5)
    alive_s: float = 45.0                # a holder that asked for nothing this long is not waited for any more

    def __post_init__(self) -> None:
        for name in ("join", "train", "control", "upload"):
            v = getattr(self, name)
            if not 0 < v <= 7 * 86400:
                raise ValueError(f"network.{name} must be in (0, 604800] seconds, got {v}")
        if not 0 < self.chunk_mib <= 4:
            raise ValueError("network.chunk_mib must be in (0, 4]")
        if self.min_holders is not None and self.min_holders < 1:
            raise ValueError("network.min_holders must be >= 1 or null")
        if self.max_aborted_rounds < 1:
            raise ValueError("network.max_aborted_rounds must be >= 1")
        if not 1 <= self.alive_s <= 3600:
            raise ValueError("network.alive_s must be in [1, 3600] seconds")


@dataclass(frozen=True)
class LoggingConfig:
    """Standard loggers besides RUN_DIR/metrics.jsonl (always written): Lightning's own, opt-in, so a
    run shows up in the tools users already have (runtime/metrics_log.py)."""

    csv: bool = False          # RUN_DIR/logs/csv/metrics.csv (lightning.fabric.loggers.CSVLogger)
    tensorboard: bool = False  # RUN_DIR/logs/tensorboard/ (TensorBoardLogger; needs the tensorboard package)


@dataclass(frozen=True)
class RunConfig:
    seed: int = 0
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    outer: OuterConfig = field(default_factory=OuterConfig)
    federation: FederationConfig = field(default_factory=FederationConfig)
    aggregation: AggregationConfig = field(default_factory=AggregationConfig)
    privacy: DPConfig = field(default_factory=DPConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    baseline: bool = True                            # also train the centralized baseline at equal tokens
    baseline_batch_size: int | None = None           # None: cohort_size x train.batch_size (data-parallel equivalent)
    # None: train.lr. The baseline's own tuned inner lr: federated averaging tolerates a higher inner lr
    # than one centralized trajectory does (Photon), so a fair comparison runs each side at its own best
    baseline_lr: float | None = None
    deterministic_secrets: bool = False              # derive all secret randomness from the seed (tests/replay only)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def __post_init__(self) -> None:
        if self.baseline_batch_size is not None and self.baseline_batch_size < 1:
            raise ValueError(f"baseline_batch_size must be >= 1 or null, got {self.baseline_batch_size}")
        if self.baseline_lr is not None:
            if isinstance(self.baseline_lr, bool) or not isinstance(self.baseline_lr, (int, float)):
                raise TypeError(f"baseline_lr must be a number or null, got {self.baseline_lr!r}")
            if not (self.baseline_lr > 0 and math.isfinite(self.baseline_lr)):
                raise ValueError(f"baseline_lr must be > 0 and finite, got {self.baseline_lr}")
        if self.privacy.mode == "distributed" and self.aggregation.mode == "plain":
            raise ValueError("privacy.mode=distributed needs secure aggregation (aggregation.mode secagg)")
        if self.aggregation.mode != "plain" and self.federation.cohort_size < 3:
            # federation.md §4.1 step 4 (secagg.md thresholds): a secure round needs 3 or more accepters (the sum of two
            # reveals each one's update to the other); with fewer every round aborted, and the run ended "done", exit 0
            what = ("federation.clients_per_round" if self.federation.clients_per_round is not None
                    else "federation.n_holders")
            raise ValueError(f"aggregation.mode={self.aggregation.mode} needs at least 3 holders in a round, and "
                             f"{what} is {self.federation.cohort_size}: every round would abort. Use 3 or more, or "
                             "aggregation.mode=plain (no protection of the individual updates)")
        eval_split_for(self.train.dp_sgd, self.data)   # ValueError for unit=document with "budget" (dp.md §10.2)
        if self.train.dp_sgd.enabled and self.train.dp_sgd.unit == "group" and self.data.unit_field is None:
            raise ValueError("train.dp_sgd.unit=group needs data.unit_field: the JSONL field or Parquet column naming "
                             "whom each record is about (e.g. a patient id)")
        if self.privacy.mode != "none" and self.federation.sampling == "poisson":
            # protocols/dp.md §11 (PV-58): a round whose Poisson draw falls below the minimum cohort (3 under secure
            # aggregation: federation.md §4.1 step 4; 1 under plain) aborts, so whether a round runs depends on whether
            # a holder was drawn — a release the sampled-Gaussian accountant does not describe. A review's exact
            # computation (6 holders, q = 0.5, central DP): ε ≥ 8.19 at δ 1e-5 where the ledger stated 7.999. Refused
            # until that abort is accounted; fixed-size cohorts never fall below the minimum
            raise ValueError("federation.sampling=poisson is refused with DP on (privacy.mode="
                             f"{self.privacy.mode}): a round whose random cohort falls below the minimum aborts, so "
                             "whether a round runs depends on whether a holder was drawn, and the amplified ε would be "
                             "understated (protocols/dp.md §11). Use federation.sampling=fixed (the default)")
        if self.privacy.mode != "none" and self.federation.weighting != "uniform":
            raise ValueError("with DP on, federation.weighting must be 'uniform' (the accountant's sensitivity assumes it)")
        if self.aggregation.mode == "ckks+secagg" and not self.aggregation.ckks.enabled:
            raise ValueError("aggregation.mode=ckks+secagg needs aggregation.ckks.enabled=true")
        if not math.isfinite(self.privacy.clip):
            raise ValueError("privacy.clip must be finite")
        if self.aggregation.mode != "plain" and self.privacy.ring_bits != self.aggregation.secagg.ring_bits:
            raise ValueError(f"privacy.ring_bits ({self.privacy.ring_bits}) must equal aggregation.secagg.ring_bits "
                             f"({self.aggregation.secagg.ring_bits}): the encoder and the masks share one ring")
        if self.privacy.mode == "distributed" and self.aggregation.mode == "ckks+secagg":
            raise ValueError("privacy.mode=distributed is not supported with aggregation.mode=ckks+secagg "
                             "(the rotation mixes all coordinates); use secagg, or central DP")


def list_presets() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("securefed.presets").iterdir() if p.name.endswith(".yaml"))


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_run_config(*, preset: str | None = "demo", config_file: str | Path | None = None,
                    overrides: tuple[str, ...] | list[str] = ()) -> RunConfig:
    """preset YAML, then config_file, then ``a.b=c`` overrides; strict validation at the end."""
    data: dict = {}
    if preset:
        names = list_presets()
        if preset not in names:
            raise ConfigError(f"unknown run preset {preset!r}; choose one of {names}")
        import yaml

        text = resources.files("securefed.presets").joinpath(f"{preset}.yaml").read_text()
        try:
            data = parse_yaml(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"run preset {preset!r} is not valid YAML ({e}); reinstall securefed") from None
        data = {} if data is None else data
        if not isinstance(data, dict):
            raise ConfigError(f"run preset {preset!r} must hold a mapping at the top level; reinstall securefed")
    if config_file:
        data = _merge(data, load_yaml(config_file))
    for o in overrides:
        override(data, o)
    return from_dict(RunConfig, data)


def _leaves(d: object, prefix: str = "") -> dict[str, object]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, object] = {}
    for k, v in d.items():
        out.update(_leaves(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


# Settings a resumed run may change (protocols/transport.md §8.1): how long the coordinator waits and how it streams.
# None of them enters the model, the data, the cohort's thresholds or the privacy accounting; a deadline that
# proved too short is what an operator most needs to change before resuming. network.min_holders is not among
# them: it decides which rounds open.
RESUME_MAY_CHANGE = frozenset(f"network.{k}" for k in ("join", "train", "control", "upload", "chunk_mib",
                                                        "max_aborted_rounds", "alive_s"))


def config_differences(a: dict, b: dict) -> list[tuple[str, object, object]]:
    """(dotted key, value in a, value in b) for every leaf setting that differs, sorted by key."""
    la, lb = _leaves(a), _leaves(b)
    return [(k, la.get(k), lb.get(k)) for k in sorted(set(la) | set(lb)) if la.get(k) != lb.get(k)]


def closest_preset(resolved: dict) -> tuple[str, list[str]]:
    """The run preset a resolved config (a config.yaml's mapping) is closest to, and the dotted keys
    in which it differs from that preset: how a run directory is described to a user."""
    from securefed.configio import to_dict

    best: tuple[str, list[str]] | None = None
    for name in list_presets():
        try:
            diff = [k for k, _, _ in config_differences(to_dict(load_run_config(preset=name)), resolved)]
        except (ConfigError, ValueError, TypeError):
            continue
        if best is None or len(diff) < len(best[1]):
            best = (name, diff)
    return best or ("unknown", [])
