"""What one attack scenario reports: a verdict, the evidence behind it and the threat ids it covers.

Verdicts (securefed audit, audits/README.md):
- MITIGATED: the attack was executed against the real code and failed, for the stated reason.
- DOCUMENTED-RESIDUAL: the attack (or part of it) succeeds; the threat model names it as a residual
  risk and says what bounds it. The numbers measure how far it gets.
- VULNERABLE: the attack succeeds against a stated defence; the report gives the fix.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

__all__ = ["MITIGATED", "RESIDUAL", "VULNERABLE", "VERDICTS", "Finding", "Scenario", "timed"]

MITIGATED = "MITIGATED"
RESIDUAL = "DOCUMENTED-RESIDUAL"
VULNERABLE = "VULNERABLE"
VERDICTS = (MITIGATED, RESIDUAL, VULNERABLE)


@dataclass
class Finding:
    id: str                       # "SEC-01"
    title: str
    verdict: str                  # one of VERDICTS
    summary: str                  # one or two sentences: what was tried and what happened
    evidence: dict = field(default_factory=dict)   # numbers and observed outcomes (JSON-able)
    threats: tuple[str, ...] = ()  # ids in threat_models/*index*.yaml
    fix: str = ""                 # for VULNERABLE: the proposed fix
    seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")
        if not self.threats:
            raise ValueError(f"{self.id}: a finding must name the threat ids it covers")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["threats"] = list(self.threats)
        return d


@dataclass(frozen=True)
class Scenario:
    id: str
    title: str
    run: Callable[[], Finding]
    expected: str                 # the verdict this version of securefed is known to get


def timed(fn: Callable[[], Finding]) -> Finding:
    t0 = time.perf_counter()
    f = fn()
    f.seconds = round(time.perf_counter() - t0, 3)
    return f
