"""In-process driver: one secure-aggregation round with every party in this process.

The runtime calls :func:`run_secagg_round`; a network transport instead carries the same bytes
between :class:`SecAggClient` and :class:`SecAggServer` (protocols/secagg.md §6).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from securefed.primitives.keys import IdentityKey
from securefed.secagg.roster import Roster
from securefed.primitives.quantize import RingSpec
from securefed.primitives.rng import Entropy
from securefed.secagg.client import SecAggClient
from securefed.secagg.config import SecAggConfig
from securefed.secagg.errors import SecAggAborted, UnexpectedMessage
from securefed.secagg.server import SecAggServer

__all__ = ["Stage", "DropoutPlan", "SecAggOutcome", "run_secagg_round"]


class Stage(enum.IntEnum):
    """The holder's sending stages, in protocol order (messages 1, 3, 5, 7, 9 of §6)."""

    ADVERTISE = 1
    SHARE = 2
    MASK = 3
    CONSISTENCY = 4
    UNMASK = 5


@dataclass(frozen=True)
class DropoutPlan:
    """``vanish[i] = s``: holder i disappears before sending its stage-s message (and never returns).
    ``malformed[i] = s``: at stage s holder i sends a truncated message (the server drops it, S6)."""

    vanish: Mapping[int, Stage] = field(default_factory=dict)
    malformed: Mapping[int, Stage] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("vanish", "malformed"):
            m = getattr(self, name)
            if not isinstance(m, Mapping):
                raise TypeError(f"{name} must be a mapping of holder id -> Stage")
            for k, v in m.items():
                if not isinstance(k, int) or not isinstance(v, Stage):
                    raise TypeError(f"{name} must map int holder ids to Stage values")
            object.__setattr__(self, name, MappingProxyType(dict(m)))


@dataclass(frozen=True)
class SecAggOutcome:
    total: np.ndarray           # ring sum of the survivors' inputs, dtype RingSpec(ring_bits).dtype
    survivors: frozenset[int]   # U3: whose inputs are in the sum
    dropped: frozenset[int]     # cohort \ U3
    bytes_up: int               # serialized bytes all holders sent to the server
    bytes_down: int             # serialized bytes the server sent to holders
    threshold: int              # Shamir threshold t (= t_min for the complete graph)


def run_secagg_round(inputs: Mapping[int, np.ndarray], *, config: SecAggConfig, round_index: int,
                     session_context: bytes, identities: Mapping[int, IdentityKey], roster: Roster,
                     entropy_for: Callable[[int], Entropy], dropouts: DropoutPlan | None = None,
                     transcript_dir: Path | None = None, executor: Executor | None = None,
                     late_input: bool = False) -> SecAggOutcome:
    """Run one round; the exact ring sum of the survivors' inputs, or :class:`SecAggAborted`.

    ``identities[i]`` is holder i's Ed25519 private key (only its own client sees it);
    ``session_context`` must carry the global-model hash; ``entropy_for(i)`` is called once per holder
    (the server needs no randomness, so -1 is never asked for). Holders that abort (a MUST rule failed)
    or vanish per ``dropouts`` count as dropped; inputs of holders whose masked input was accepted are in
    the sum even if they vanish later (protocols/secagg.md §8). ``executor``: threads for the clients'
    mask pre-expansion and the server's unmasking (§6.5); ``late_input``: each client is given its
    input only after its ShareKeys (as a holder that trains meanwhile). Neither changes the result.
    """
    if not isinstance(config, SecAggConfig):
        raise TypeError("config must be a SecAggConfig")
    if not isinstance(inputs, Mapping) or not inputs:
        raise ValueError("inputs must be a non-empty mapping of holder id -> ring vector")
    ring = RingSpec(config.ring_bits)
    lengths = set()
    for i, v in inputs.items():
        if not isinstance(v, np.ndarray) or v.ndim != 1 or v.dtype != ring.dtype:
            raise TypeError(f"inputs[{i}] must be a 1-D array of dtype {ring.dtype}")
        if i not in identities:
            raise ValueError(f"identities has no key for holder {i}")
        lengths.add(v.shape[0])
    if len(lengths) != 1:
        raise ValueError("all inputs must have the same length")
    plan = dropouts or DropoutPlan()
    cohort = sorted(inputs)
    length = lengths.pop()
    server = SecAggServer(config=config, cohort=cohort, vector_length=length, round_index=round_index,
                          session_context=session_context, roster=roster, transcript_dir=transcript_dir,
                          executor=executor)
    clients = {i: SecAggClient(i, identity=identities[i], roster=roster, config=config, session_context=session_context,
                               round_index=round_index, vector=None if late_input else inputs[i], length=length,
                               entropy=entropy_for(i), executor=executor) for i in cohort}
    gone: set[int] = set()
    start = server.round_start()
    outbox = {i: start for i in cohort}
    up = down = 0
    for stage in Stage:
        for i, data in outbox.items():
            down += len(data)
            if i in gone or plan.vanish.get(i, Stage.UNMASK + 1) <= stage:
                gone.add(i)
                continue
            try:
                reply = clients[i].handle(data)
            except (SecAggAborted, UnexpectedMessage):
                gone.add(i)  # an honest holder refusing a (lying) server simply stops answering
                continue
            if late_input and stage == Stage.SHARE:
                clients[i].provide_input(inputs[i])   # "training" ends after the key stages (§6.5)
            if plan.malformed.get(i) == stage:
                reply = reply[: len(reply) // 2]
            up += len(reply)
            server.receive(i, reply)
        outbox = server.close_stage()  # raises SecAggAborted below t_min
    return SecAggOutcome(total=server.result, survivors=server.survivors, dropped=frozenset(cohort) - server.survivors,
                         bytes_up=up, bytes_down=down, threshold=server.start.threshold)
