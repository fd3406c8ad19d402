"""DPConfig: the typed, validated privacy settings of a run (loadable with configio.from_dict)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["DPConfig", "BudgetExhausted", "default_delta", "DEFAULT_DELTA"]


class BudgetExhausted(RuntimeError):
    """A privacy cap would be exceeded (or is already spent): nothing is sent for this round."""


def _num(name: str, v: object) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError(f"{name} must be a number")
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    return float(v)


DEFAULT_DELTA = 1e-5


def default_delta(population: int) -> float:
    """δ = min(10⁻⁵, population^(−1.1)) (protocols/dp.md §5).

    Below 1/population, as δ must be, and never larger than 10⁻⁵: population^(−1.1) alone is 0.218 for 4
    holders, and an (ε, 0.2) statement protects nobody (a mechanism that publishes one holder's whole
    update with probability 0.2 satisfies it).
    """
    return min(DEFAULT_DELTA, float(population) ** -1.1)


@dataclass(frozen=True)
class DPConfig:
    mode: Literal["none", "central", "distributed"] = "none"
    mechanism: Literal["ddgauss", "skellam", "gaussian"] = "ddgauss"  # gaussian only for central
    clip: float = 1.0  # L2 bound C on each holder's Δ (applies in every mode, also "none")
    adaptive_clip: bool = False
    target_quantile: float = 0.5
    noise_multiplier: float | None = None  # σ (aggregate noise std = σ·C); None -> calibrated from target_epsilon
    target_epsilon: float | None = None
    delta: float | None = None  # None -> population^(-1.1); δ ≥ 1/population refused
    accountant: Literal["rdp", "prv"] = "rdp"
    ring_bits: int = 32  # 12..32 here; secure aggregation accepts 16..32
    server_epsilon_cap: float | None = None
    holder_epsilon_cap: float | None = None  # default cap for every holder; per-holder overrides via the session
    force_unlearnable: bool = False  # train even when the pre-flight check finds the noise hopeless (privacy/preflight.py)

    def __post_init__(self) -> None:
        if self.mode not in ("none", "central", "distributed"):
            raise ValueError(f"mode must be none, central or distributed, got {self.mode!r}")
        if self.mechanism not in ("ddgauss", "skellam", "gaussian"):
            raise ValueError(f"mechanism must be ddgauss, skellam or gaussian, got {self.mechanism!r}")
        if self.mode == "central" and self.mechanism != "gaussian":
            raise ValueError("mode 'central' adds continuous Gaussian noise at the server: set mechanism: gaussian")
        if self.mode == "distributed" and self.mechanism == "gaussian":
            raise ValueError("mode 'distributed' needs discrete noise: mechanism ddgauss or skellam")
        if _num("clip", self.clip) <= 0:
            raise ValueError(f"clip must be > 0, got {self.clip}")
        if not isinstance(self.adaptive_clip, bool) or not isinstance(self.force_unlearnable, bool):
            raise TypeError("adaptive_clip and force_unlearnable must be bools")
        if not 0 < _num("target_quantile", self.target_quantile) < 1:
            raise ValueError("target_quantile must be in (0, 1)")
        if self.noise_multiplier is not None and _num("noise_multiplier", self.noise_multiplier) < 0:
            raise ValueError(f"noise_multiplier must be >= 0, got {self.noise_multiplier}")
        if self.target_epsilon is not None and _num("target_epsilon", self.target_epsilon) <= 0:
            raise ValueError(f"target_epsilon must be > 0, got {self.target_epsilon}")
        if self.delta is not None and not 0 < _num("delta", self.delta) < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.accountant not in ("rdp", "prv"):
            raise ValueError("accountant must be rdp or prv")
        if isinstance(self.ring_bits, bool) or not isinstance(self.ring_bits, int) or not 12 <= self.ring_bits <= 32:
            raise ValueError(f"ring_bits must be an int in [12, 32], got {self.ring_bits!r}")
        for name in ("server_epsilon_cap", "holder_epsilon_cap"):
            v = getattr(self, name)
            if v is not None and _num(name, v) <= 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        if self.dp_on:
            if self.noise_multiplier is None and self.target_epsilon is None:
                raise ValueError(f"mode {self.mode!r} needs noise_multiplier or target_epsilon")
            if self.noise_multiplier is not None and self.target_epsilon is not None:
                raise ValueError("give noise_multiplier or target_epsilon, not both")
            if self.noise_multiplier == 0:
                raise ValueError("noise_multiplier 0 gives no privacy: use mode 'none'")
            if self.accountant == "prv" and self.mode != "central":
                raise ValueError("accountant 'prv' covers the Gaussian mechanism only (mode central); use 'rdp'")
        elif self.server_epsilon_cap is not None or self.holder_epsilon_cap is not None:
            raise ValueError("epsilon caps need DP (mode central or distributed): with mode 'none' epsilon is infinite")
        elif self.target_epsilon is not None or self.noise_multiplier:
            # σ = 0 cannot meet a finite target: refuse instead of silently training without noise
            raise ValueError("target_epsilon / noise_multiplier need DP (mode central or distributed): with mode 'none' "
                             "no noise is added and epsilon is infinite")

    @property
    def dp_on(self) -> bool:
        return self.mode != "none"
