"""RoundPrivacy: one round's encoders/decoders, made by PrivacySession.begin_round (one-shot object).

Holder side: :meth:`encode` (secure-aggregation path) or :meth:`clip` (plain baseline path).
Server side: :meth:`decode` or :meth:`noise_plain_sum`, then :meth:`finish` records the release.
Modes (protocols/dp.md §3): "none" and "central" quantize with primitives.quantize (central adds
continuous Gaussian noise N(0, (z_Δ·C)²) at the trusted server after decoding); "distributed" uses
encoders.DiscretePlan (each holder adds its discrete noise share before masking).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np

from securefed.privacy.clipping import ClipInfo, adaptive_update, data_noise_multiplier, l2_clip
from securefed.privacy.encoders import DiscretePlan, gaussian_noise
from securefed.primitives.quantize import QuantizationPlan, RingSpec, dequantize_sum
from securefed.primitives.rng import Entropy, SystemEntropy

if TYPE_CHECKING:  # pragma: no cover
    from securefed.privacy.session import PrivacySession

__all__ = ["RoundPrivacy"]


class RoundPrivacy:
    def __init__(self, session: "PrivacySession", round_index: int, cohort: tuple[int, ...], participants: tuple[int, ...],
                 refused: tuple[int, ...], dim: int, plan: DiscretePlan | QuantizationPlan | None, z: float) -> None:
        self._s = session
        self.mode = session.config.mode
        self.round_index = round_index
        self.cohort = cohort
        self.participants = participants  # the cohort minus holders that refused for their cap
        self.refused = refused
        self.refusal_reasons: dict[int, str] = {}  # holder -> why it refused (plain words, for the ledger and report)
        self.drop_reasons: dict[int, str] = {}     # participant -> why it dropped out, where it said (a refused Plan)
        self.dim = dim
        self.plan = plan
        self.noise_multiplier = z  # the accounted σ
        self.clip_bound = session.clip  # C of this round (adaptive clipping moves it between rounds)
        self.ring = plan.ring if plan is not None else RingSpec(session.config.ring_bits)
        self.scale = float(plan.scale) if plan is not None else 0.0
        self.encoded_dim = plan.encoded_dim if isinstance(plan, DiscretePlan) else dim
        # σ_b of the plan (central: the population's, dp.md §6.4 and §9), the one every ledger entry accounts: a σ_b of
        # the realised participants would make the data noise z_Δ, and so the release's variance, depend on whether
        # one holder took part — a divergence the accountant never charges
        self.sigma_b = session._sigma_b(plan, z)
        self.data_noise_multiplier = z if self.sigma_b is None else data_noise_multiplier(z, self.sigma_b)
        self.decoded = False
        self.finished = False
        self._entropy: Entropy | None = None
        self._noisy_bits: float | None = None  # Σ (b − ½) + N(0, σ_b²) over the survivors

    @property
    def aggregate_noise_std(self) -> float:
        """Std of the noise in the decoded sum per coordinate (real units) when every participant survives."""
        return self.data_noise_multiplier * self.clip_bound if self._s.config.dp_on else 0.0

    def _check_holder(self, holder_id: int) -> None:
        if holder_id in self.refused:
            raise PermissionError(f"holder {holder_id} refused this round (its epsilon cap): it must not send anything")
        if holder_id not in self.participants:
            raise ValueError(f"holder {holder_id} is not a participant of round {self.round_index}")

    def _check_delta(self, delta: np.ndarray) -> np.ndarray:
        if not isinstance(delta, np.ndarray):
            raise TypeError("delta must be a numpy array")
        if delta.shape != (self.dim,):
            raise ValueError(f"delta must be a flat vector of length {self.dim}, got shape {delta.shape}")
        return delta

    # ------------------------------------------------------------------ holder side
    def clip(self, holder_id: int, delta: np.ndarray) -> tuple[np.ndarray, ClipInfo]:
        """Plain path: the clipped float32 update and its ClipInfo."""
        self._check_holder(holder_id)
        return l2_clip(self._check_delta(delta), self.clip_bound)

    def encode(self, holder_id: int, delta: np.ndarray, entropy: Entropy) -> tuple[np.ndarray, ClipInfo]:
        """float32 Δ -> ring vector of length ``encoded_dim`` (clip, [rotate + noise share], quantize).

        The one encoder is the holder's: this is :func:`securefed.privacy.remote.spec_encode` of this
        round's public spec, so an in-process caller encodes exactly as a remote holder does."""
        from securefed.privacy.remote import round_spec, spec_encode

        return spec_encode(round_spec(self), delta, entropy, clipped=self.clip(holder_id, delta))

    # ------------------------------------------------------------------ server side
    def _check_survivors(self, survivors: Sequence[int]) -> tuple[int, ...]:
        s = tuple(survivors)
        if len(set(s)) != len(s) or not set(s) <= set(self.participants):
            raise ValueError("survivors must be distinct participants of this round")
        return s

    def decode(self, ring_sum: np.ndarray, *, survivors: Sequence[int], entropy: Entropy) -> np.ndarray:
        """Ring sum of the survivors' encodings -> float32 SUM of their clipped (noised) updates, length dim."""
        if self.finished:
            raise RuntimeError("round already finished")
        s = self._check_survivors(survivors)
        self._entropy = entropy
        ring_sum = np.asarray(ring_sum)
        if ring_sum.dtype != self.ring.dtype or ring_sum.shape != (self.encoded_dim,):
            raise ValueError(f"ring_sum must be {self.ring.dtype} of length {self.encoded_dim}")
        if self.plan is None:  # no participant: nothing was encoded, the sum is empty
            if s:
                raise ValueError("a round without participants has no survivors")
            out = np.zeros(self.dim, np.float64)
            out = self._central_noise(out, entropy) if self.mode == "central" else out.astype(np.float32)
        elif isinstance(self.plan, DiscretePlan):
            out, self._noisy_bits = self.plan.decode(ring_sum)
        elif self.mode == "central":  # noise the exact float64 sum; the float32 cast is post-processing
            out = self._central_noise(dequantize_sum(ring_sum, self.plan, np.float64), entropy)
        else:
            out = dequantize_sum(ring_sum, self.plan)
        self.decoded = True
        return out

    def _central_noise(self, x: np.ndarray, entropy: Entropy) -> np.ndarray:
        """Add N(0, (z_Δ·C)²) per coordinate. The accountant charges it against the norm bound of one
        holder's *decoded* contribution, not C (events.quantized_sensitivity, dp.md §6.4)."""
        noise = gaussian_noise(entropy, x.size, self.data_noise_multiplier * self.clip_bound)
        noise += x            # in place: the same IEEE sums as x + noise, without two more P-sized float64 arrays
        return noise.astype(np.float32)

    def noise_plain_sum(self, sum_f32: np.ndarray, entropy: Entropy) -> np.ndarray:
        """Plain path: central -> add N(0, (z_Δ C)²); none -> identity (the caller's float32 array itself, not a
        copy: both callers pass a sum formed for this call); distributed -> refused."""
        if self.mode == "distributed":
            raise ValueError("distributed DP needs secure aggregation: the plain aggregation path is refused")
        x = np.asarray(sum_f32, dtype=np.float32)
        if x.shape != (self.dim,):
            raise ValueError(f"sum must have length {self.dim}")
        self._entropy = entropy
        self.decoded = True
        return self._central_noise(x, entropy) if self.mode == "central" else x

    def finish(self, *, survivors: Sequence[int], clip_infos: Mapping[int, ClipInfo], completing: bool = False,
               in_masked_sum: int | None = None) -> dict:
        """Record the release: holder ledgers, then the server ledger. Returns the server entry
        (plus ``clip_fraction``, the exact fraction of clipped survivors: simulation telemetry, not in the ledger).
        ``in_masked_sum``: under ckks+secagg, how many of the ``survivors`` (all in the CKKS part) are also in the
        masked part, where fewer — the count the holders settle at (dp.md §7.3 (4))."""
        if self.finished:
            raise RuntimeError("round already finished")
        s = self._check_survivors(survivors)
        infos = [clip_infos[h] for h in s if h in clip_infos]
        exact_within = sum(1 for i in infos if not i.clipped)
        frac: float | None = None
        next_clip = self.clip_bound
        if self._s.config.adaptive_clip and s:
            # Andrew et al. 2021: release Σ(b − ½) + N(0, σ_b²) (sensitivity ½) and divide by the *expected*
            # number of clients (public), so the exact survivor count does not leak into the clip
            m = float(self._s.cohort_size)
            if self.mode == "distributed":
                frac = None if self._noisy_bits is None else self._noisy_bits / m + 0.5
            elif self.mode == "central":  # the trusted server noises the centred count
                e = self._entropy if self._entropy is not None else SystemEntropy()
                frac = (exact_within - len(infos) / 2.0 + float(gaussian_noise(e, 1, self.sigma_b)[0])) / m + 0.5
            else:
                frac = exact_within / max(1, len(infos))
            if frac is not None:
                next_clip = adaptive_update(self.clip_bound, frac, self._s.config.target_quantile)
        if in_masked_sum is not None and (self.mode == "distributed" or not 0 <= in_masked_sum < len(s)):
            raise ValueError("in_masked_sum must be fewer than the survivors, and never under distributed DP "
                             "(its noise shares are the masked sum's)")
        entry = self._s.record(self, s, frac, next_clip, completing=completing, in_masked_sum=in_masked_sum)
        self.finished = True
        entry["clip_fraction"] = (1 - exact_within / len(infos)) if infos else math.nan
        return entry
