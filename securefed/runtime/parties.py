"""Per-party randomness and identities for one simulated federation.

Production runs draw every secret from the OS CSPRNG. ``deterministic_secrets`` (tests, replay) derives
an independent AES-CTR stream per (seed, round, party, purpose) so a resumed run is bit-identical to an
uninterrupted one; it must never be used with real data, since the seed then determines every mask.
"""

from __future__ import annotations

import hashlib

from securefed.primitives.rng import DeterministicEntropy, Entropy, SystemEntropy

__all__ = ["EntropyFactory", "SERVER_PARTY"]

SERVER_PARTY = -1


class EntropyFactory:
    def __init__(self, *, seed: int, deterministic: bool) -> None:
        self.seed, self.deterministic = seed, deterministic

    def for_party(self, round_index: int, party: int, purpose: str) -> Entropy:
        if not self.deterministic:
            return SystemEntropy()
        label = f"securefed/sim-entropy/v1|{self.seed}|{round_index}|{party}|{purpose}".encode()
        return DeterministicEntropy(hashlib.sha256(label).digest())
