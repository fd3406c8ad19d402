"""The coordinator's privacy session over the network, exactly once across ``kill -9`` (protocols/transport.md §8.1).

Wraps ``securefed.privacy.PrivacySession`` (the simulation's accountant and hash-chained ledgers) for
privacy modes ``none`` and ``central``; ``distributed`` needs holder-side noise encoding that the
privacy package does not expose to a remote holder yet, and is refused.

Ordering per round (the checkpoint is the write-ahead record):

    rp = begin(r)  →  secagg  →  sum = decode(rp)  →  outer step
    checkpoint {model, privacy anchor (before finish), pending = (round, participants, survivors, clip infos)}
    finish(rp)     →  holder ledgers + server ledger appended
    checkpoint {model, privacy anchor (after finish), pending = None}

On resume with a pending finish: if the server ledger already has that round's entry past the
anchor, it is kept (the append happened); otherwise the round's accounting is replayed from the
pending record (``begin_round`` + ``finish`` are deterministic in modes none/central). So each
completed round is accounted exactly once, and a round killed before its first checkpoint is not
accounted at all (its result was never used; it is re-run).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from securefed.primitives.rng import SystemEntropy
from securefed.privacy import DPConfig, PrivacySession
from securefed.privacy.clipping import ClipInfo

__all__ = ["NetPrivacy"]

log = logging.getLogger("securefed.server")


class NetPrivacy:
    def __init__(self, config: DPConfig, *, population: int, cohort_size: int, rounds: int, ring_bits: int,
                 ledger_dir: Path) -> None:
        self.check(config, ring_bits)
        self.config = config
        # the networked coordinator samples fixed-size cohorts (protocols/transport.md §5.2)
        self.session = PrivacySession(config, population=population, cohort_size=cohort_size, rounds_planned=rounds,
                                      sampling="fixed", ledger_dir=ledger_dir)

    @staticmethod
    def check(config: DPConfig, ring_bits: int) -> None:
        """Refuse what the networked path cannot run, before any file is written."""
        if not isinstance(config, DPConfig):
            raise TypeError("config must be a DPConfig")
        if config.mode == "distributed":
            raise ValueError("privacy.mode=distributed is not available over the network yet (holders would need "
                             "the distributed-noise encoder's plan); use none or central")
        if config.ring_bits != ring_bits:
            raise ValueError(f"privacy.ring_bits ({config.ring_bits}) must equal aggregation.secagg.ring_bits ({ring_bits})")

    def begin(self, r: int, cohort: list[int], dim: int):
        return self.session.begin_round(r, cohort=cohort, dim=dim)

    @staticmethod
    def manifest(rp) -> dict:
        """What a holder needs to encode exactly as RoundPrivacy.encode would (clip → quantize)."""
        return {"privacy_mode": rp.mode, "clip": rp.clip_bound, "quant_scale": rp.scale,
                "max_clients": rp.plan.max_clients, "ring_bits": rp.ring.bits}

    def decode(self, rp, ring_total: np.ndarray, survivors: list[int]) -> np.ndarray:
        return rp.decode(ring_total, survivors=survivors, entropy=SystemEntropy())

    def denominator(self, survivors: list[int]) -> float:
        # DP: the planned cohort (fixed denominator bounds one holder's influence by C / cohort), as in simulate
        return float(self.session.cohort_size) if self.config.mode != "none" else float(len(survivors))

    @staticmethod
    def pending(rp, survivors: list[int], clip_infos: dict[int, ClipInfo]) -> dict:
        return {"round": rp.round_index, "cohort": list(rp.cohort), "dim": rp.dim, "survivors": list(survivors),
                "clip_infos": {int(h): [float(c.norm), bool(c.clipped)] for h, c in clip_infos.items()}}

    def finish(self, rp, survivors: list[int], clip_infos: dict[int, ClipInfo]) -> dict:
        return rp.finish(survivors=survivors, clip_infos=clip_infos)

    def state_dict(self) -> dict:
        return self.session.state_dict()

    def restore(self, state: dict, pending: dict | None) -> bool:
        """Load the checkpoint's anchor; complete a pending round's accounting if its append never happened.
        Returns True if an entry was replayed."""
        self.session.load_state_dict(state)
        if not pending:
            return False
        tail = self.session.ledger.entries[int(state["ledger_entries"]):]
        if any(e.get("round") == pending["round"] for e in tail):
            return False
        rp = self.session.begin_round(pending["round"], cohort=pending["cohort"], dim=pending["dim"])
        infos = {int(h): ClipInfo(norm=v[0], clipped=v[1]) for h, v in pending["clip_infos"].items()}
        rp.finish(survivors=pending["survivors"], clip_infos=infos, completing=True)  # holders already charged: not again
        log.warning("replayed round %d's privacy accounting from the checkpoint", pending["round"])
        return True

    def epsilon(self) -> tuple[float, float]:
        return self.session.epsilon_spent()
