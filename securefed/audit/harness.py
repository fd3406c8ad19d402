"""A secure-aggregation round the attacker can drive message by message.

The real :class:`SecAggServer` and :class:`SecAggClient` (protocols/secagg.md §6) run unchanged; the
harness only stands where the transport would, so a scenario can play a lying server (rewrite or
withhold what it sends) or a lying holder (rewrite what it sends). Every secret comes from
``DeterministicEntropy``, so each scenario is reproducible bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from securefed.primitives.quantize import RingSpec
from securefed.primitives.rng import DeterministicEntropy
from securefed.secagg import (Roster, SecAggAborted, SecAggClient, SecAggConfig, SecAggServer, UnexpectedMessage,
                              decode, generate_identity)

__all__ = ["CTX", "federation", "random_inputs", "Round"]

CTX = b"securefed-audit/model-sha256:" + bytes(32)


def federation(n: int, seed: int = 0) -> tuple[dict, Roster]:
    """Identities 1..n (Ed25519) and the roster of their public keys."""
    ids = {i: generate_identity(DeterministicEntropy.from_int(1_000_003 * (seed + 1) + i)) for i in range(1, n + 1)}
    return ids, Roster.from_identities(ids)


def random_inputs(ids, length: int, bits: int = 32, seed: int = 0) -> dict[int, np.ndarray]:
    ring = RingSpec(bits)
    rng = np.random.default_rng(seed)
    return {i: rng.integers(0, ring.modulus, length, dtype=np.uint64).astype(ring.dtype) for i in ids}


class Round:
    """One round over ``cohort``: ``deliver`` (server → holders), ``forward`` (holders → server)."""

    def __init__(self, *, n: int = 7, cohort=None, length: int = 8, config: SecAggConfig = SecAggConfig(),
                 round_index: int = 0, ctx: bytes = CTX, client_ctx: Mapping[int, bytes] | None = None,
                 seed: int = 0, federation_=None, inputs=None, server_config: SecAggConfig | None = None) -> None:
        self.identities, self.roster = federation_ or federation(n, seed)
        self.cohort = sorted(cohort or self.identities)
        self.config = config
        self.inputs = inputs or random_inputs(self.cohort, length, config.ring_bits, seed)
        self.server = SecAggServer(config=server_config or config, cohort=self.cohort, vector_length=length,
                                   round_index=round_index, session_context=ctx, roster=self.roster)
        client_ctx = client_ctx or {}
        self.clients = {i: SecAggClient(i, identity=self.identities[i], roster=self.roster, config=config,
                                        session_context=client_ctx.get(i, ctx), round_index=round_index,
                                        vector=self.inputs[i],
                                        entropy=DeterministicEntropy.from_int(77_000 + 1000 * seed + 31 * round_index + i))
                        for i in self.cohort}
        start = self.server.round_start()
        self.outbox: dict[int, bytes] = {i: start for i in self.cohort}
        self.aborted: dict[int, str] = {}      # holder -> why it stopped
        self.replies: list[dict[int, bytes]] = []  # what the server received, stage by stage

    def deliver(self, outbox: Mapping[int, bytes] | None = None,
                tamper: Callable[[int, bytes], bytes] | None = None) -> dict[int, bytes]:
        """Hand each holder its message; an aborting holder (MUST rule) answers nothing."""
        replies = {}
        for i, data in (self.outbox if outbox is None else outbox).items():
            if i in self.aborted:
                continue
            if tamper is not None:
                data = tamper(i, data)
            try:
                replies[i] = self.clients[i].handle(data)
            except (SecAggAborted, UnexpectedMessage) as e:
                self.aborted[i] = str(e)
        self.replies.append(replies)
        return replies

    def forward(self, replies: Mapping[int, bytes]) -> dict[int, bytes]:
        for i, r in replies.items():
            self.server.receive(i, r)
        self.outbox = self.server.close_stage()
        return self.outbox

    def step(self, tamper=None) -> "Round":
        self.forward(self.deliver(tamper=tamper))
        return self

    def steps(self, k: int) -> "Round":
        for _ in range(k):
            self.step()
        return self

    def message_for(self, i: int):
        return decode(self.outbox[i])

    def expected_sum(self, ids) -> np.ndarray:
        ring = RingSpec(self.config.ring_bits)
        acc = np.zeros_like(next(iter(self.inputs.values())))
        for i in ids:
            np.add(acc, self.inputs[i], out=acc)
        return ring.reduce(acc)
