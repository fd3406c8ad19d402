"""Fixed-point quantization into the ring Z_{2^k}: scale, rounding, embedding and bounds.

One module holds scale, offset and overflow bounds (STYLE.md §7). Signed integers are embedded
in the ring in two's complement (centred representatives), so there is no offset to track: the
sum of n embedded vectors decodes to the signed integer sum as long as every partial sum stays in
[-2^(k-1), 2^(k-1)). :func:`plan_quantization` picks the largest scale for which that holds for
``max_clients`` inputs of L2 norm at most ``clip`` and refuses configurations that could wrap.

Error bound (per coordinate, before dividing by anything): each rounding is off by < 1 unit, so
|dequantize(Σ q_i) − Σ x_i| < n / scale, plus the float32 cast of the result (≤ n·C·2^-24);
:attr:`QuantizationPlan.sum_error_bound` states both.

Norm bound (protocols/dp.md §6.4): randomised rounding can lengthen a vector (‖q‖ up to γ‖x‖ + √d),
and a DP mechanism that noises the decoded sum must be accounted at the norm of what it noises.
:func:`quantize` therefore rounds *conditionally* (Kairouz, Liu, Steinke 2021, Thm. 1 eq. (2)): it
repeats unbiased rounding until ‖q‖₂ ≤ :func:`rounded_l2_bound` (γ‖x‖, d), so every encoding of an
input of norm ≤ C has ‖q‖₂ ≤ :meth:`QuantizationPlan.l2_bound` (d) = rounded_l2_bound(γC, d) — a hard
check, not a probability. Each try succeeds with probability ≥ 1 − β (β = e^{−1/2}).
"""

from __future__ import annotations

import math
from concurrent.futures import Executor
from dataclasses import dataclass

import numpy as np

from securefed.primitives.rng import Entropy, uniform_float64
from securefed.primitives.spans import for_spans

__all__ = [
    "RingSpec",
    "QuantizationPlan",
    "plan_quantization",
    "stochastic_round",
    "to_ring",
    "from_ring",
    "quantize",
    "quantize_draws",
    "sum_sq_f64",
    "max_abs",
    "dequantize_sum",
    "rounded_l2_bound",
    "accept_threshold",
    "BETA",
    "MAX_ROUNDING_TRIES",
    "ROUNDING_CHUNK",
]

SMALLEST_RING_BITS = 12  # what RingSpec represents (encoders, property tests of tight rings)
MIN_RING_BITS = 16  # the smallest ring secure-aggregation configurations accept
MAX_RING_BITS = 32
BETA = math.exp(-0.5)  # KLS 2021's bias parameter: each conditional-rounding try fails with probability ≤ β
MAX_ROUNDING_TRIES = 200  # 0.61^200 ≈ 1e-43


def rounded_l2_bound(scaled_norm: float, dim: int, beta: float = BETA) -> float:
    """Δ₂ of KLS 2021 Thm. 1 eq. (2), in integer units: the norm a conditional rounding of an input of
    norm ≤ ``scaled_norm`` (= γ·‖x‖) over ``dim`` coordinates may have.

        Δ₂ = min{ √(c² + d/4 + √(2 ln(1/β))·(c + √d/2)),  c + √d }

    Increasing in c (both branches are), which is what lets the bound for the clip C cover every input.
    """
    c = float(scaled_norm)
    a = c * c + dim / 4.0 + math.sqrt(2.0 * math.log(1.0 / beta)) * (c + math.sqrt(dim) / 2.0)
    return min(math.sqrt(a), c + math.sqrt(dim))


def accept_threshold(bound: float, dim: int, block: int | None = None) -> float:
    """Largest float64 value of a computed ‖q‖² that proves ‖q‖ <= ``bound`` for an integer vector q.

    A float64 dot product over m terms errs by at most m·2^-53 relative (terms are exact: |q_j| < 2^31
    squares to < 2^62, rounded once), and summing k chunk results adds k·2^-53; the margin
    (m + k + 8)·2^-52 covers both and a few ulps in evaluating ``bound`` itself.
    """
    m = min(dim, block) if block else dim
    k = -(-dim // block) if block else 1
    return bound * bound * (1.0 - (m + k + 8) * 2.0**-52)


@dataclass(frozen=True)
class RingSpec:
    """The ring Z_{2^bits}; elements are stored as uint16 (bits <= 16) or uint32."""

    bits: int = 32

    def __post_init__(self) -> None:
        if not isinstance(self.bits, int) or isinstance(self.bits, bool):
            raise TypeError("ring bits must be an int")
        if not SMALLEST_RING_BITS <= self.bits <= MAX_RING_BITS:
            raise ValueError(f"ring bits must be in [{SMALLEST_RING_BITS}, {MAX_RING_BITS}], got {self.bits}")

    @property
    def modulus(self) -> int:
        return 1 << self.bits

    @property
    def mask(self) -> int:
        return self.modulus - 1

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(np.uint16) if self.bits <= 16 else np.dtype(np.uint32)

    @property
    def bytes_per_element(self) -> int:
        return self.dtype.itemsize

    def reduce(self, x: np.ndarray) -> np.ndarray:
        """Reduce an array of the storage dtype in place modulo 2^bits (no-op when bits fills it)."""
        if self.bits != 8 * self.dtype.itemsize:
            np.bitwise_and(x, self.dtype.type(self.mask), out=x)
        return x


@dataclass(frozen=True)
class QuantizationPlan:
    """How real vectors of L2 norm <= clip become ring elements for a cohort of <= max_clients."""

    clip: float
    ring: RingSpec
    max_clients: int
    scale: float

    @property
    def max_abs_per_client(self) -> int:
        """Largest |q_j| one client can produce: |x_j| <= clip (checked exactly by :func:`quantize`), and
        float64 multiplication is monotone, so |fl(x_j·γ)| <= fl(clip·γ); rounding adds < 1."""
        return math.floor(self.clip * self.scale) + 1

    def l2_bound(self, dim: int) -> float:
        """Largest ‖q‖₂ (integer units) of one encoding of ``dim`` coordinates (conditional rounding)."""
        return rounded_l2_bound(self.clip * self.scale, dim)

    @property
    def sum_error_bound(self) -> float:
        """Per-coordinate bound on |dequantize(Σ q_i) − Σ x_i| for max_clients inputs.

        n/scale from the roundings, plus the float32 cast of the result: |Σ x_i| <= n·clip, rounded
        to float32 with relative error <= 2^-24.
        """
        return self.max_clients / self.scale + self.max_clients * self.clip * 2.0**-24

    def check_no_wrap(self, n_clients: int) -> None:
        """Raise ValueError if n_clients inputs could wrap the centred ring."""
        if n_clients > self.max_clients:
            raise ValueError(
                f"{n_clients} clients exceed the plan's max_clients={self.max_clients}: the sum could wrap Z_2^{self.ring.bits}"
            )


def plan_quantization(*, clip: float, ring_bits: int = 32, max_clients: int, scale: float | None = None) -> QuantizationPlan:
    """Choose (or check) the scale so that the sum of max_clients clipped inputs never wraps.

    Requirement: max_clients * (clip*scale + 1) <= 2^(k-1) - 1 (centred representatives).
    """
    if not isinstance(clip, (int, float)) or isinstance(clip, bool):
        raise TypeError("clip must be a number")
    if not math.isfinite(clip) or clip <= 0:
        raise ValueError(f"clip must be a finite number > 0, got {clip}")
    if not isinstance(max_clients, int) or isinstance(max_clients, bool):
        raise TypeError("max_clients must be an int")
    if max_clients < 1:
        raise ValueError("max_clients must be >= 1")
    ring = RingSpec(ring_bits)
    half = (1 << (ring.bits - 1)) - 1
    largest = (half // max_clients - 1) / float(clip)
    if largest < 1.0:
        raise ValueError(
            f"ring of {ring.bits} bits is too small for {max_clients} clients at clip {clip}: "
            "the sum would wrap; use more ring bits or fewer clients"
        )
    if scale is None:
        scale = largest
    else:
        if not isinstance(scale, (int, float)) or isinstance(scale, bool) or not math.isfinite(scale) or scale <= 0:
            raise ValueError("scale must be a finite number > 0")
        if scale > largest:
            raise ValueError(
                f"scale {scale} could wrap Z_2^{ring.bits} for {max_clients} clients at clip {clip} "
                f"(largest safe scale {largest:.6g})"
            )
    plan = QuantizationPlan(clip=float(clip), ring=ring, max_clients=max_clients, scale=float(scale))
    # the promise, in exact integers: max_clients encodings of at most max_abs_per_client each fit
    if max_clients * plan.max_abs_per_client > half:  # pragma: no cover - float slack in `largest`
        raise ValueError(f"scale {scale} could wrap Z_2^{ring.bits} for {max_clients} clients at clip {clip}")
    return plan


def stochastic_round(x: np.ndarray, entropy: Entropy) -> np.ndarray:
    """Unbiased randomized rounding to int64: floor(x) + [u < x - floor(x)], u ~ U[0,1)."""
    x = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(x)):
        raise ValueError("cannot round non-finite values")
    lo = np.floor(x)
    u = uniform_float64(entropy, x.size).reshape(x.shape)
    return (lo + (u < (x - lo))).astype(np.int64)


def to_ring(values: np.ndarray, ring: RingSpec) -> np.ndarray:
    """Embed signed int64 values in Z_{2^k} (two's complement), stored in ring.dtype."""
    v = np.asarray(values)
    if v.dtype.kind != "i":
        raise TypeError("to_ring expects a signed integer array")
    # integer casts to a narrower unsigned type keep the value mod 2^width, and 2^k divides 2^width
    return ring.reduce(v.astype(ring.dtype, casting="unsafe"))


def from_ring(r: np.ndarray, ring: RingSpec) -> np.ndarray:
    """Centred lift of ring elements to int64 in [-2^(k-1), 2^(k-1))."""
    r = np.asarray(r)
    if r.dtype != ring.dtype:
        raise TypeError(f"expected ring elements of dtype {ring.dtype}, got {r.dtype}")
    v = r.astype(np.int64) & ring.mask
    return v - ((v >> (ring.bits - 1)) << ring.bits)


def quantize(x: np.ndarray, plan: QuantizationPlan, entropy: Entropy, *, executor: Executor | None = None) -> np.ndarray:
    """Clip-checked fixed-point encoding of one client's float vector into the ring.

    ``x`` must already be clipped: ‖x‖₂ <= plan.clip, with no slack (``privacy.clipping.l2_clip`` leaves
    a 10⁻⁶ margin). Any slack would let one coordinate exceed clip·γ and wrap the ring at max_clients.
    A float32 or float64 ``x`` is read in place: ‖x‖ and max|x_j| are taken span by span (:func:`sum_sq_f64`,
    :func:`max_abs`) and each rounding chunk is widened to float64 exactly where it is rounded, so no P-sized
    float64 temporary is made (at 1.3b that was 10.6 GB, twice).
    Randomized rounding uses 32 random bits per coordinate: q = floor(y) + [u < frac(y)·2^32] with
    u uniform in [0, 2^32), so E[q] = y up to 2^-32 (far below the 1/scale resolution) while drawing
    half the randomness of :func:`stochastic_round` and staying in place (this is the holder's hot path).
    The rounding is repeated until ‖q‖₂ <= rounded_l2_bound(γ‖x‖, d) (module doc): conditioning biases
    q by at most what a failed try could move it, times β/(1 − β), and for large d almost every first try
    succeeds (the bound leaves d/12 of slack above the expected ‖q‖²).

    ``executor``: the chunks are rounded on the caller's threads. The rounding bits are still drawn from
    ``entropy`` chunk by chunk in order and the chunks' ‖q‖² summed in chunk order, so the output is the
    same bits as without it.
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):                # float32 and float64 are read as they are: each
        x = x.astype(np.float64)                               # chunk is widened exactly where it is rounded
    if x.ndim != 1:
        raise ValueError("quantize expects a flat vector")
    norm = math.sqrt(sum_sq_f64(x))
    if not math.isfinite(norm):
        raise ValueError("update contains non-finite values")
    if norm > plan.clip or max_abs(x) > plan.clip:
        raise ValueError(f"update norm {norm:.9g} exceeds the clip bound {plan.clip:.9g}: clip before quantizing")
    # accept ‖q‖ <= Δ₂(γ‖x‖, d); the threshold makes the float64 check imply the exact one
    bound_sq = accept_threshold(rounded_l2_bound(plan.scale * norm, x.size), x.size, _CHUNK)
    out = np.empty(x.size, dtype=plan.ring.dtype)
    n = _CHUNK
    starts = list(range(0, x.size, n))
    for _ in range(MAX_ROUNDING_TRIES):
        sq = 0.0
        if executor is None:
            y, lo = np.empty(n), np.empty(n)                  # scratch, reused per chunk (cache-sized)
            for start in starts:
                m = min(n, x.size - start)
                sq += _round_chunk(x, out, start, m, plan, entropy.random_bytes(4 * m), y, lo)
        else:
            for w in range(0, len(starts), _WINDOW):          # bounded memory: _WINDOW chunks of bits at once
                part = starts[w : w + _WINDOW]
                bits = [entropy.random_bytes(4 * min(n, x.size - s)) for s in part]   # in chunk order
                for v in executor.map(lambda s, b: _round_chunk(x, out, s, len(b) // 4, plan, b), part, bits):
                    sq += v                                    # in chunk order: the serial loop's float64 sum
        if sq <= bound_sq:
            return plan.ring.reduce(out)
    raise RuntimeError("conditional randomised rounding did not succeed")  # pragma: no cover - p ≈ 1e-43


SPAN = 1 << 16   # coordinates per step of the norm and max passes: their float64 temporaries stay in cache


def sum_sq_f64(x: np.ndarray) -> float:
    """‖x‖² of a flat float (or integer, |x_j| < 2^53) vector, accumulated in float64 span by span (``SPAN``
    coordinates per pairwise sum, the partial sums added in order) without a float64 copy of the whole vector; the
    same sum for x in float32 or float64 (the widening is exact). ``privacy.clipping.l2_clip`` and :func:`quantize`
    both take their norm this way; ``privacy.device_encode`` mirrors it on the GPU."""
    n = x.shape[0]
    buf = np.empty(min(n, SPAN), np.float64)
    sq = 0.0
    for s in range(0, n, SPAN):
        c = buf[: min(SPAN, n - s)]
        c[...] = x[s : s + SPAN]
        sq += _span_sq(c, c)
    return sq


def _span_sq(c: np.ndarray, out: np.ndarray) -> float:
    """Σ c_j² of one float64 span (``out``: scratch of its length, ``c`` itself allowed): numpy's own pairwise sum,
    the same bits on every machine and thread count. np.dot was OpenBLAS's ddot, whose summation order follows its
    thread count (two threads and one gave ‖Δ‖² differing in the last bits, so a clipped Δ depended on the host) and
    which woke its threads at every span: 2.19 s for 52M coordinates on 2 busy cores against 0.077 s
    (benchmarks/round_overhead.md)."""
    np.multiply(c, c, out=out)
    return float(out.sum())


def max_abs(x: np.ndarray) -> float:
    """max |x_j| of a flat float vector (0 if empty), span by span (no |x| temporary of the whole vector);
    NaN if any coordinate is NaN."""
    n = x.shape[0]
    top = np.zeros(-(-n // SPAN), np.float64)           # max |x| per SPAN (order does not matter for a max)

    def spans_of(lo: int, hi: int) -> None:
        for s in range(lo, hi, SPAN):
            top[s // SPAN] = np.max(np.abs(x[s : min(s + SPAN, hi)]))
    for_spans(n, spans_of, align=SPAN)
    if np.isnan(top).any():
        return float("nan")
    return float(top.max()) if n else 0.0


def quantize_draws(n: int) -> list[int]:
    """The sizes (bytes) of quantize's entropy draws for a vector of n coordinates, first try, in order:
    4 bytes per coordinate, one draw per chunk (what a caller may prefetch, rng.PrefetchedEntropy)."""
    return [4 * min(_CHUNK, n - s) for s in range(0, n, _CHUNK)]


def _round_chunk(x: np.ndarray, out: np.ndarray, start: int, m: int, plan: QuantizationPlan, bits: bytes,
                 y: np.ndarray | None = None, lo: np.ndarray | None = None) -> float:
    """out[start:start+m] = randomised rounding of x[start:start+m]·γ with ``bits``; returns its ‖q‖²."""
    xc = x[start : start + m]
    yc = np.empty(m) if y is None else y[:m]
    lc = np.empty(m) if lo is None else lo[:m]
    np.multiply(xc, plan.scale, out=yc, dtype=np.float64)      # fl64(x)·γ; |y| <= fl(clip·γ) < 2^31 by the plan
    np.floor(yc, out=lc)
    np.subtract(yc, lc, out=yc)                                # frac(y) in [0, 1)
    np.multiply(yc, 4294967296.0, out=yc)                      # frac · 2^32
    u = np.frombuffer(bits, dtype="<u4")
    lc += u < yc                                               # + 1 with probability frac (to 2^-32)
    # lo is an exact integer in float64; wrap it into the ring: int64 two's complement, then truncate
    out[start : start + m] = lc.astype(np.int64).astype(plan.ring.dtype, casting="unsafe")
    return _span_sq(lc, yc)                                    # ‖q‖² of the chunk (integers, float64 sums)


_WINDOW = 64
ROUNDING_CHUNK = 1 << 18   # coordinates per entropy draw and per partial sum of ‖q‖² (accept_threshold's block)
_CHUNK = ROUNDING_CHUNK


_DECODE_CHUNK = 1 << 16   # coordinates per step of dequantize_sum: its int64/float64 temporaries stay in cache


def dequantize_sum(ring_sum: np.ndarray, plan: QuantizationPlan, dtype: type = np.float32) -> np.ndarray:
    """Decode the ring sum of <= max_clients quantized vectors back to a float sum (float32 by default;
    float64 for a server that adds noise before any float32 rounding).

    Element by element it is ``(from_ring(s).astype(float64) / scale).astype(dtype)``, the same bits: the
    centred lift is taken as a sign extension in the storage width (shift the k ring bits to the top, view
    as signed, shift back arithmetically) instead of in int64, and the vector goes through in 64k-coordinate
    steps with reused buffers. The one-pass formula made five int64/float64 temporaries of the whole vector
    (10.6 GB each at 1.3B coordinates, part of the 1.3b round's 63 s aggregate stage, RESULTS.md (j13));
    this is 4-25x faster (benchmarks/secagg/host_passes.py), and the spans run on the host's cores."""
    ring = plan.ring
    ring_sum = np.asarray(ring_sum)
    if ring_sum.ndim != 1:
        raise ValueError("dequantize_sum expects a flat ring vector")
    if ring_sum.dtype != ring.dtype:
        raise TypeError(f"expected ring elements of dtype {ring.dtype}, got {ring_sum.dtype}")
    signed = np.dtype(np.int16) if ring.dtype.itemsize == 2 else np.dtype(np.int32)
    shift = 8 * ring.dtype.itemsize - ring.bits          # 0 when the ring fills its storage word
    n = ring_sum.shape[0]
    out = np.empty(n, dtype=dtype)

    def span(lo: int, hi: int) -> None:                              # one thread's share, its own buffers
        words = np.empty(min(hi - lo, _DECODE_CHUNK), ring.dtype)
        wide = np.empty(min(hi - lo, _DECODE_CHUNK), np.float64)
        for s in range(lo, hi, _DECODE_CHUNK):
            part = ring_sum[s : min(s + _DECODE_CHUNK, hi)]
            m = part.shape[0]
            w, f = words[:m], wide[:m]
            np.left_shift(part, ring.dtype.type(shift), out=w)      # drops any bits above k (from_ring's mask)
            lift = w.view(signed)
            np.right_shift(lift, signed.type(shift), out=lift)      # arithmetic: the centred lift in [-2^(k-1), 2^(k-1))
            f[...] = lift                                           # exact: |lift| < 2^31
            np.divide(f, plan.scale, out=f)
            out[s : s + m] = f                                      # the float64 -> dtype rounding of astype
    for_spans(n, span)                                              # across the cores (spans.py): the same bits
    return out
