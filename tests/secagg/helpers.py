"""Shared fixtures for the secure-aggregation tests: a federation, inputs and a stage-by-stage harness."""

from __future__ import annotations

import numpy as np

from securefed.primitives.quantize import RingSpec
from securefed.primitives.rng import DeterministicEntropy
from securefed.secagg import (Roster, SecAggClient, SecAggConfig, SecAggServer, decode, generate_identity,
                              run_secagg_round)

CTX = b"global-model-sha256:" + bytes(range(32))


def federation(n: int, seed: int = 0):
    ids = {i: generate_identity(DeterministicEntropy.from_int(100_000 * seed + i)) for i in range(1, n + 1)}
    return ids, Roster.from_identities(ids)


def make_inputs(n: int, length: int, bits: int = 32, seed: int = 0) -> dict[int, np.ndarray]:
    ring = RingSpec(bits)
    rng = np.random.default_rng(seed)
    return {i: rng.integers(0, ring.modulus, length, dtype=np.uint64).astype(ring.dtype) for i in range(1, n + 1)}


def ring_sum(inputs, ids, bits: int = 32) -> np.ndarray:
    ring = RingSpec(bits)
    acc = np.zeros(len(next(iter(inputs.values()))), dtype=ring.dtype)
    for i in ids:
        np.add(acc, inputs[i], out=acc)
    return ring.reduce(acc)


def run(n=10, length=16, config=SecAggConfig(), dropouts=None, seed=0, round_index=0, transcript_dir=None):
    ids, roster = federation(n)
    inputs = make_inputs(n, length, config.ring_bits, seed)
    out = run_secagg_round(inputs, config=config, round_index=round_index, session_context=CTX, identities=ids,
                           roster=roster, entropy_for=lambda i: DeterministicEntropy.from_int(7_000 + 50 * seed + i),
                           dropouts=dropouts, transcript_dir=transcript_dir)
    return out, inputs


class Harness:
    """Server and clients driven stage by stage, so a test can play a lying server towards one client."""

    def __init__(self, n=7, length=8, config=SecAggConfig(), round_index=0, ctx=CTX, client_ctx=None, seed=0):
        self.ids, self.roster = federation(n)
        self.config = config
        self.inputs = make_inputs(n, length, config.ring_bits, seed)
        self.server = SecAggServer(config=config, cohort=self.ids, vector_length=length, round_index=round_index,
                                   session_context=ctx, roster=self.roster)
        client_ctx = client_ctx or {}
        self.clients = {i: SecAggClient(i, identity=self.ids[i], roster=self.roster, config=config,
                                        session_context=client_ctx.get(i, ctx), round_index=round_index,
                                        vector=self.inputs[i], entropy=DeterministicEntropy.from_int(900 + 37 * seed + i))
                        for i in self.ids}
        start = self.server.round_start()
        self.outbox = {i: start for i in self.ids}
        self.sent: list[dict[int, bytes]] = []

    def step(self, skip=(), tamper=None):
        """Deliver the outbox (optionally tampered), forward replies, close the stage."""
        replies = {}
        for i, data in self.outbox.items():
            if i in skip:
                continue
            if tamper is not None:
                data = tamper(i, data)
            replies[i] = self.clients[i].handle(data)
        for i, r in replies.items():
            self.server.receive(i, r)
        self.sent.append(replies)
        self.outbox = self.server.close_stage()
        return replies

    def message_for(self, i):
        return decode(self.outbox[i])

    def steps(self, k):
        for _ in range(k):
            self.step()
        return self

