"""Stage numbers, deadlines, round outcome and the small validators of the coordinator (protocols/transport.md §5, §6)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from securefed.secagg import SecAggServer
from securefed.transport.frames import FrameError

__all__ = ["Stage", "SECAGG_STAGES", "MAX_CONTROL", "MAX_RESULT", "Deadlines", "RoundOutcome",
           "accept_streamed_masked", "round_report"]


class Stage:
    ROUND, MODEL, ADVERTISE, SHARES, MASKED, CONSISTENCY, UNMASK = range(7)


SECAGG_STAGES = (Stage.ADVERTISE, Stage.SHARES, Stage.MASKED, Stage.CONSISTENCY, Stage.UNMASK)
MAX_CONTROL = 16 << 20           # largest non-vector secagg message accepted (ShareKeys of a big cohort)
MAX_RESULT = 64 << 10


@dataclass(frozen=True)
class Deadlines:
    """Seconds per stage (protocols/transport.md §6.1); training happens inside ``train``."""

    join: float = 120.0          # wait for holders before a round opens
    train: float = 600.0         # round open -> AdvertiseKeys (download + K local steps + encode)
    control: float = 60.0        # each small secagg stage
    upload: float = 600.0        # the masked-input stream

    def for_stage(self, stage: int) -> float:
        return {Stage.ADVERTISE: self.train, Stage.MASKED: self.upload}.get(stage, self.control)


@dataclass
class RoundOutcome:
    ring_total: np.ndarray | None
    survivors: tuple[int, ...]
    cohort: tuple[int, ...]
    results: dict[int, dict]
    bytes_up: int
    bytes_down: int
    aborted: str | None = None
    stage_seconds: dict = field(default_factory=dict)


def accept_streamed_masked(sa: SecAggServer, sender: int) -> None:
    """Register an already-folded MaskedInput with the secagg server (S1, S4 checked by the stream);
    a holder not expected now is a FrameError, as any other out-of-protocol frame."""
    try:
        sa.accept_streamed_masked(sender)
    except ValueError as e:
        raise FrameError("masked input not expected from this holder") from e


def round_report(data: bytes) -> dict:
    """A holder's RESULT (§5.2): only known keys with sane values reach metrics; else ValueError."""
    obj = json.loads(data.decode("utf-8"))
    if not isinstance(obj, dict):
        raise ValueError("result must be a JSON object")
    out = {}
    tokens, loss = obj.get("tokens", 0), obj.get("loss")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or not 0 <= tokens < 2**53:
        raise ValueError("result.tokens must be a non-negative int")
    out["tokens"] = tokens
    if loss is not None:
        if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not np.isfinite(loss):
            raise ValueError("result.loss must be a finite number or null")
        out["loss"] = float(loss)
    out["clipped"] = obj.get("clipped") is True
    norm = obj.get("norm", 0.0)
    if isinstance(norm, bool) or not isinstance(norm, (int, float)) or not (np.isfinite(norm) and norm >= 0):
        raise ValueError("result.norm must be a finite number >= 0")
    out["norm"] = float(norm)
    return out
