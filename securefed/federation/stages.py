"""The stages of one round and their deadlines (protocols/federation.md §4).

A round is a sequence of stages; in each the coordinator sends each addressed holder one message
and (except MODEL) collects one reply. The numbers are the ``stage`` field of transport frames and
increase along every round of every mode (a gRPC holder fetches "the next stage ≥ the last one + 1",
protocols/transport.md §5.2). Secure aggregation's key stages have two slots (federation.md §4.3):
before training under ``secagg`` (the masks are expanded while the holder trains), after the CKKS
sum under ``ckks+secagg`` (the masked cohort is drawn from the CKKS survivors).

    OFFER        Offer (cohort, θ hash, provisional privacy plan)     → Decision (accept / refuse + reason)
    SECAGG_START  RoundStart  (secagg only: before training)          → AdvertiseKeys
    SECAGG_SHARES KeyRoster   (secagg only: before training)          → ShareKeys     then masks expand
    MODEL        θ_r, float32 little-endian                           → (none: the holder trains)
    PLAN         Plan (final privacy plan over the accepters)         → Ready (tokens, loss) | Decision (refuse)
    CKKS_ROTATE  CkksRotate (new key generation)                      → KeyAdvertMsg            ┐ ckks+secagg,
    CKKS_KEYS    CkksAdverts (to the generation's leader)             → CkksKeys                │ only when a key
    CKKS_SHARE   CkksShare (sealed key share + leader's advert)       → Decision (ok / failed)  ┘ rotation is due
    CKKS_UPLOAD  CkksUploadRequest                                    → UploadMsg (ciphertexts)   RELEASE
    CKKS_DECRYPT AggregateMsg (to the decryptor only)                 → the decrypted sum, float64
    PLAIN_UPLOAD (empty: aggregation "plain" only)                    → the clipped Δ, float32     RELEASE
    CKKS_SECAGG_START  RoundStart (ckks+secagg: over the CKKS survivors) → AdvertiseKeys
    CKKS_SECAGG_SHARES KeyRoster                                      → ShareKeys
    SECAGG_MASKED ForwardedShares                                     → MaskedInput (streamed)     RELEASE
    SECAGG_CONSISTENCY SurvivorList                                   → ConsistencySignature
    SECAGG_UNMASK UnmaskRequest                                       → UnmaskShares
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

__all__ = ["Stage", "SECAGG_STAGES", "KEY_STAGES", "secagg_stages", "RELEASE_STAGES", "CKKS_STAGES", "holder_stages",
           "Deadlines", "stage_label"]


class Stage(IntEnum):
    OFFER = 0
    SECAGG_START = 1
    SECAGG_SHARES = 2
    MODEL = 3
    PLAN = 4
    CKKS_ROTATE = 5
    CKKS_KEYS = 6
    CKKS_SHARE = 7
    CKKS_UPLOAD = 8
    CKKS_DECRYPT = 9
    PLAIN_UPLOAD = 10
    CKKS_SECAGG_START = 11
    CKKS_SECAGG_SHARES = 12
    SECAGG_MASKED = 13
    SECAGG_CONSISTENCY = 14
    SECAGG_UNMASK = 15


# every stage that carries a secure-aggregation message, in either slot
SECAGG_STAGES = (Stage.SECAGG_START, Stage.SECAGG_SHARES, Stage.CKKS_SECAGG_START, Stage.CKKS_SECAGG_SHARES,
                 Stage.SECAGG_MASKED, Stage.SECAGG_CONSISTENCY, Stage.SECAGG_UNMASK)
# the key stages (RoundStart, KeyRoster) of each aggregation mode (protocols/federation.md §4.3)
KEY_STAGES = {"secagg": (Stage.SECAGG_START, Stage.SECAGG_SHARES),
              "ckks+secagg": (Stage.CKKS_SECAGG_START, Stage.CKKS_SECAGG_SHARES)}


def secagg_stages(mode: str) -> tuple[Stage, ...]:
    """The five secure-aggregation stages of a round under ``mode``, in order (secagg.md §6, messages 0–9)."""
    return (*KEY_STAGES[mode], Stage.SECAGG_MASKED, Stage.SECAGG_CONSISTENCY, Stage.SECAGG_UNMASK)
# the stages whose reply carries (a function of) the holder's data: released at most once per round
RELEASE_STAGES = (Stage.CKKS_UPLOAD, Stage.PLAIN_UPLOAD, Stage.SECAGG_MASKED)
CKKS_STAGES = (Stage.CKKS_ROTATE, Stage.CKKS_KEYS, Stage.CKKS_SHARE, Stage.CKKS_UPLOAD, Stage.CKKS_DECRYPT)


def holder_stages(mode: str) -> frozenset[Stage]:
    """Every stage a holder of aggregation ``mode`` takes part in (the table above; federation.md §4). A holder
    answers no other: a coordinator publishing another mode's stage (a gRPC holder fetches any later stage number)
    reached CKKS code of a secagg holder, or asked a plain holder for secure-aggregation stages (tracebacks)."""
    own = {"plain": (Stage.PLAIN_UPLOAD,), "secagg": secagg_stages("secagg"),
           "ckks+secagg": (*CKKS_STAGES, *secagg_stages("ckks+secagg"))}
    if mode not in own:
        raise ValueError(f"unknown aggregation mode {mode!r}")
    return frozenset((Stage.OFFER, Stage.MODEL, Stage.PLAN, *own[mode]))


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


def stage_label(stage: int) -> str:
    """How progress lines name a stage: "local training" for PLAN (the holders train during it), else its name."""
    return "local training" if stage == Stage.PLAN else Stage(stage).name.lower()
