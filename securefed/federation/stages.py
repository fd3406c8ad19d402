"""The stages of one round and their deadlines (protocols/federation.md §4).

A round is a sequence of stages; in each the coordinator sends each addressed holder one message
and (except MODEL) collects one reply. The numbers are the ``stage`` field of transport frames.

    OFFER        Offer (cohort, θ hash, provisional privacy plan)     → Decision (accept / refuse + reason)
    MODEL        θ_r, float32 little-endian                           → (none: the holder trains)
    PLAN         Plan (final privacy plan over the accepters)         → Ready (tokens, loss) | Decision (refuse)
    CKKS_ROTATE  CkksRotate (new key generation)                      → KeyAdvertMsg            ┐ ckks+secagg,
    CKKS_KEYS    CkksAdverts (to the generation's leader)             → CkksKeys                │ only when a key
    CKKS_SHARE   CkksShare (sealed key share + leader's advert)       → Decision (ok / failed)  ┘ rotation is due
    CKKS_UPLOAD  CkksUploadRequest                                    → UploadMsg (ciphertexts)   RELEASE
    CKKS_DECRYPT AggregateMsg (to the decryptor only)                 → the decrypted sum, float64
    PLAIN_UPLOAD (empty: aggregation "plain" only)                    → the clipped Δ, float32     RELEASE
    SECAGG_START RoundStart                                           → AdvertiseKeys
    SECAGG_SHARES KeyRoster                                           → ShareKeys
    SECAGG_MASKED ForwardedShares                                     → MaskedInput (streamed)     RELEASE
    SECAGG_CONSISTENCY SurvivorList                                   → ConsistencySignature
    SECAGG_UNMASK UnmaskRequest                                       → UnmaskShares
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["Stage", "SECAGG_STAGES", "RELEASE_STAGES", "Deadlines"]


class Stage(IntEnum):
    OFFER = 0
    MODEL = 1
    PLAN = 2
    CKKS_ROTATE = 3
    CKKS_KEYS = 4
    CKKS_SHARE = 5
    CKKS_UPLOAD = 6
    CKKS_DECRYPT = 7
    PLAIN_UPLOAD = 8
    SECAGG_START = 9
    SECAGG_SHARES = 10
    SECAGG_MASKED = 11
    SECAGG_CONSISTENCY = 12
    SECAGG_UNMASK = 13


SECAGG_STAGES = (Stage.SECAGG_START, Stage.SECAGG_SHARES, Stage.SECAGG_MASKED, Stage.SECAGG_CONSISTENCY,
                 Stage.SECAGG_UNMASK)
# the stages whose reply carries (a function of) the holder's data: released at most once per round
RELEASE_STAGES = (Stage.CKKS_UPLOAD, Stage.PLAIN_UPLOAD, Stage.SECAGG_MASKED)


@dataclass(frozen=True)
class Deadlines:
    """Seconds each stage may take over the network (protocols/transport.md §6.1); the in-process
    channel has no waiting. ``train`` covers download + K local steps + encoding (stage PLAN)."""

    join: float = 120.0          # wait for holders before a round opens
    train: float = 600.0
    control: float = 60.0        # each small stage
    upload: float = 600.0        # a streamed update (masked input, plain update, ciphertexts)

    def __post_init__(self) -> None:
        for name in ("join", "train", "control", "upload"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 7 * 86400:
                raise ValueError(f"deadline {name} must be in (0, 604800] seconds, got {v!r}")

    @classmethod
    def from_config(cls, net) -> "Deadlines":
        """From RunConfig.network (runtime.config.NetworkConfig)."""
        return cls(join=net.join, train=net.train, control=net.control, upload=net.upload)

    def for_stage(self, stage: Stage) -> float:
        if stage == Stage.PLAN:
            return self.train
        if stage in RELEASE_STAGES:
            return self.upload
        return self.control
