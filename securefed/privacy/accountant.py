"""Privacy accountants: one :class:`RoundEvent` per round, composed into (ε, δ).

State is only the list of events (rebuilt from the ledger on resume, protocols/dp.md §6); ε is
recomputed from the pure functions in :mod:`securefed.privacy.rdp` on demand (as Opacus does).

Neighbouring relations (protocols/dp.md §2): Poisson sampling ↔ add/remove one holder; fixed-size
sampling without replacement ↔ replace one holder (sensitivities doubled, also when q = 1). Each
holder's own ledger uses the run's relation with q = 1 (no amplification: the coordinator knows the
cohort); sampling "none" is add/remove without amplification.
Accountant "prv" (Opacus PRV, Gopi et al. 2021) applies to the Gaussian mechanism with Poisson
sampling only; every other combination uses RDP and refuses "prv".
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from typing import Callable, Literal, Sequence

import numpy as np

from securefed.privacy import rdp as R

__all__ = ["RoundEvent", "event_rdp", "Accountant", "accountant_version", "calibrate_noise_multiplier", "ACCOUNTANT_SCHEME",
           "SCHEMES", "scheme_of", "ledger_scheme", "epsilon_text"]


def epsilon_text(eps, digits: int = 4) -> str:
    """An ε for people (console, logs, report, pre-flight): ``digits`` significant digits rounded UP, so a shown ε is
    never below the accountant's bound (an accountant review: the report said "ε = 13.04" for 13.0449, the console
    "10.8" for 10.8017); ∞ for inf, "—" when absent. Machine-readable files keep the full value."""
    if eps is None:
        return "—"
    if isinstance(eps, str):
        return "∞" if eps == "inf" else eps
    v = float(eps)
    if math.isinf(v):
        return "∞"
    if v <= 0 or math.isnan(v):
        return f"{v:g}"
    scale = 10.0 ** (math.floor(math.log10(v)) - digits + 1)
    up = math.ceil(v / scale * (1 - 1e-12)) * scale   # (1 − 1e-12: 8.0 stays 8, not 8.001)
    return f"{up:.{digits}g}" if up < 10 ** digits else f"{up:.0f}"

Mechanism = Literal["none", "empty", "gaussian", "ddgauss", "skellam"]
Sampling = Literal["poisson", "fixed", "none"]


# The scheme a new run accounts with, and those this code recomputes (protocols/dp.md §6.5):
#   /1  central-mode Gaussian events charged at C (not recomputable: /2 charges the decoded quantized norm, §6.4)
#   /2  a fixed-size cohort's Gaussian (replace-one, q < 1) amplified by WBK 2019 Thm. 9
#   /3  the same by WBK 2019 Thm. 27 with exact forward differences (rdp.wor_gaussian_rdp): up to 10x smaller ε at
#       large σ. Every other event has the same curve under /2 and /3.
# A run keeps the scheme of its first server ledger entry when resumed (PrivacySession), so its ε never changes
# under it; verify recomputes each ledger with the scheme its entries name.
ACCOUNTANT_SCHEME = 3
SCHEMES = (2, 3)
_VERSION_RE = re.compile(r"^securefed-(rdp|prv)/(\d+) ")


@functools.lru_cache(maxsize=8)
def accountant_version(kind: str, scheme: int = ACCOUNTANT_SCHEME) -> str:
    from importlib.metadata import PackageNotFoundError, version

    def v(pkg: str) -> str:
        try:
            return version(pkg)
        except PackageNotFoundError:
            return "absent"

    return f"securefed-{kind}/{scheme} (opacus {v('opacus')}, dp-accounting {v('dp-accounting')})"


def scheme_of(version: object) -> int:
    """The accountant scheme an entry's ``accountant_version`` names; ValueError if none this code recomputes."""
    m = _VERSION_RE.match(str(version))
    if not m or int(m.group(2)) not in SCHEMES:
        raise ValueError(f"was accounted with {str(version)[:80]!r}; this securefed recomputes schemes "
                         f"{', '.join(f'/{s}' for s in SCHEMES)} only")
    return int(m.group(2))


def ledger_scheme(entries: Sequence[dict]) -> int:
    """The one scheme of a ledger's entries (ACCOUNTANT_SCHEME for an empty ledger); ValueError if they mix."""
    found = {scheme_of(e.get("accountant_version")) for e in entries}
    if len(found) > 1:
        raise ValueError(f"the ledger mixes accountant schemes {sorted(found)}: a run keeps the scheme it began with")
    return found.pop() if found else ACCOUNTANT_SCHEME


@dataclass(frozen=True)
class RoundEvent:
    """One release. Gaussian: ``noise_multiplier`` = noise std / C. Discrete: integer-unit add/remove
    sensitivities (l1, l2), and the noise actually in the sum (n_shares × share_std, or variance)."""

    mechanism: Mechanism
    sampling: Sampling = "none"
    q: float = 1.0
    noise_multiplier: float = 0.0
    l1: float = 0.0
    l2: float = 0.0
    share_std: float = 0.0
    n_shares: int = 0
    dim: int = 0
    variance: float = 0.0

    def __post_init__(self) -> None:
        if self.mechanism not in ("none", "empty", "gaussian", "ddgauss", "skellam"):
            raise ValueError(f"unknown mechanism {self.mechanism!r}")
        if self.sampling not in ("poisson", "fixed", "none"):
            raise ValueError(f"unknown sampling {self.sampling!r}")
        if not 0 < self.q <= 1:
            raise ValueError(f"sampling rate q must be in (0, 1], got {self.q}")
        if self.noise_multiplier < 0:
            raise ValueError("noise_multiplier must be >= 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "RoundEvent":
        if not isinstance(d, dict) or set(d) != {f.name for f in dataclasses.fields(cls)}:
            raise ValueError("malformed privacy event")
        return cls(**d)

    def unsampled(self) -> "RoundEvent":
        return dataclasses.replace(self, sampling="none", q=1.0)


@functools.lru_cache(maxsize=512)
def event_rdp(ev: RoundEvent, scheme: int = ACCOUNTANT_SCHEME) -> np.ndarray:
    """RDP curve of one event on rdp.ORDERS under accountant ``scheme`` (read-only array)."""
    if scheme not in SCHEMES:
        raise ValueError(f"accountant scheme {scheme!r} is not one of {SCHEMES}")
    orders = np.asarray(R.ORDERS)
    if ev.mechanism == "none":
        out = np.full(orders.shape, np.inf)
    elif ev.mechanism == "empty":  # nothing was released (no survivors): no privacy cost
        out = np.zeros(orders.shape)
    elif ev.mechanism == "gaussian":
        if ev.sampling == "poisson":
            out = R.poisson_gaussian_rdp(ev.q, ev.noise_multiplier)
        elif ev.sampling == "fixed":
            z = ev.noise_multiplier / 2.0       # replace-one sensitivity 2C
            if scheme >= 3:                     # WBK 2019 Thm. 27, exact differences (tests: = dp-accounting's where
                out = R.wor_gaussian_rdp(ev.q, z)   # its float64 ones are accurate, ≥ the PLD lower bound everywhere)
            else:                               # /2: WBK 2019 Thm. 9
                out = R.wor_subsampled_rdp(lambda a: a / (2.0 * z * z), ev.q)
        else:
            out = R.gaussian_rdp(ev.noise_multiplier)
    else:
        out = _discrete_rdp(ev)
    out = np.asarray(out, dtype=np.float64)
    out.setflags(write=False)
    return out


def _discrete_base(ev: RoundEvent, factor: float) -> Callable[[np.ndarray], np.ndarray]:
    """Unsampled RDP curve with sensitivities multiplied by ``factor`` (2 for replace-one)."""
    l1, l2 = ev.l1 * factor, ev.l2 * factor
    if ev.mechanism == "ddgauss":
        return lambda a: R.ddgauss_rdp(l1=l1, l2=l2, sigma=ev.share_std, n=ev.n_shares, dim=ev.dim, orders=a)
    return lambda a: R.skellam_rdp(l1=l1, l2=l2, variance=ev.variance, orders=a)


def _discrete_rdp(ev: RoundEvent) -> np.ndarray:
    factor = 2.0 if ev.sampling == "fixed" else 1.0  # replace-one doubles the sensitivities, also at q = 1
    if ev.sampling == "none" or ev.q >= 1.0:
        return _discrete_base(ev, factor)(np.asarray(R.ORDERS))
    base = _discrete_base(ev, factor)
    ints = np.arange(2, 257, dtype=np.float64)
    table = base(ints)  # curve at integer orders, looked up by the amplification bounds
    fn = lambda a: float(table[int(a) - 2])  # noqa: E731
    amp = R.poisson_subsampled_rdp if ev.sampling == "poisson" else R.wor_subsampled_rdp
    return amp(fn, ev.q)


class Accountant:
    """Composes events; ``kind`` is "rdp" or "prv" (see module doc)."""

    def __init__(self, kind: Literal["rdp", "prv"] = "rdp", scheme: int = ACCOUNTANT_SCHEME) -> None:
        if kind not in ("rdp", "prv"):
            raise ValueError(f"accountant must be 'rdp' or 'prv', got {kind!r}")
        if scheme not in SCHEMES:
            raise ValueError(f"accountant scheme {scheme!r} is not one of {SCHEMES}")
        self.kind, self.scheme = kind, scheme
        self.events: list[RoundEvent] = []

    @staticmethod
    def check_supported(kind: str, ev: RoundEvent) -> None:
        if kind == "prv" and not (ev.mechanism in ("gaussian", "empty") and ev.sampling in ("poisson", "none")):
            raise ValueError("accountant 'prv' supports only the Gaussian mechanism with Poisson sampling; use 'rdp'")

    def add(self, ev: RoundEvent) -> None:
        self.check_supported(self.kind, ev)
        self.events.append(ev)

    def epsilon(self, delta: float, extra: Sequence[RoundEvent] = ()) -> float:
        """ε at δ of all events so far plus ``extra`` (a projection; state unchanged)."""
        evs = list(self.events) + list(extra)
        if not evs:
            return 0.0
        if any(e.mechanism == "none" for e in evs):
            return math.inf
        if self.kind == "prv":
            return _prv_epsilon(evs, delta)
        total = np.zeros(len(R.ORDERS))
        for e in evs:
            total = total + event_rdp(e, self.scheme)
        return R.eps_from_rdp(total, delta)[0]

    def state_dict(self) -> dict:
        return {"kind": self.kind, "scheme": self.scheme, "events": [e.to_dict() for e in self.events]}

    def load_state_dict(self, state: dict) -> None:
        if not isinstance(state, dict) or state.get("kind") != self.kind or not isinstance(state.get("events"), list):
            raise ValueError("accountant state is malformed or of another kind")
        scheme = state.get("scheme", 2)          # a state saved before schemes were recorded is of /2
        if scheme not in SCHEMES:
            raise ValueError(f"accountant state of scheme {scheme!r}; this securefed recomputes {SCHEMES}")
        self.events, self.scheme = [RoundEvent.from_dict(e) for e in state["events"]], scheme


def _prv_epsilon(evs: Sequence[RoundEvent], delta: float) -> float:
    from opacus.accountants import PRVAccountant

    hist: list[tuple[float, float, int]] = []
    for e in (e for e in evs if e.mechanism != "empty"):
        key = (e.noise_multiplier, e.q if e.sampling == "poisson" else 1.0)
        if hist and hist[-1][:2] == key:
            hist[-1] = (key[0], key[1], hist[-1][2] + 1)  # run-length history, as Opacus keeps it
        else:
            hist.append((key[0], key[1], 1))
    if not hist:
        return 0.0
    acc = PRVAccountant()
    acc.history = hist
    return R.clamp_epsilon(acc.get_epsilon(delta=delta, eps_error=0.01))  # ε ≥ 0, as rdp.eps_from_rdp


def calibrate_noise_multiplier(
    eps_of_sigma: Callable[[float], float], target_epsilon: float, *, lo: float = 0.05, hi: float = 4.0, tol: float = 1e-3
) -> float:
    """Smallest σ (within relative ``tol``) with eps_of_sigma(σ) ≤ target, by bisection (ε falls with σ).

    eps_of_sigma may raise ValueError for σ it cannot support (read as ε = ∞). Returns the safe end.
    """
    if not isinstance(target_epsilon, (int, float)) or not math.isfinite(target_epsilon) or target_epsilon <= 0:
        raise ValueError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")

    def f(s: float) -> float:
        try:
            return eps_of_sigma(s)
        except ValueError:
            return math.inf

    while f(hi) > target_epsilon:
        hi *= 2.0
        if hi > 1e6:
            raise ValueError(f"no noise multiplier up to 1e6 reaches epsilon {target_epsilon}")

    def bisect(lo: float, hi: float) -> tuple[float, bool]:
        moved = False  # whether some σ above lo was found too small, i.e. the answer lies above lo
        while hi / lo > 1 + tol:
            mid = math.sqrt(lo * hi)  # bisection in log σ
            if f(mid) <= target_epsilon:
                hi = mid
            else:
                lo, moved = mid, True
        return hi, moved

    # lo is probed only if the answer may lie below it: ε at σ = 0.05 over many rounds is of no use, and Opacus' PRV
    # needs gigabytes for it (> 5 GB at q = 0.01 over 100 rounds). Where f(lo) > target this is the bisection of
    # [lo, hi] as before, step for step
    out, moved = bisect(lo, hi)
    if moved or f(lo) > target_epsilon:
        return out
    while lo > 1e-6 and f(lo) <= target_epsilon:
        lo /= 2.0
    return bisect(lo, hi)[0]
