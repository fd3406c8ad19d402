"""privacy.device_encode: w·Δ clipped and rounded where Δ was trained gives the host path's ring vector
(protocols/secagg.md §6.6) — the same bits from the same entropy, on the CPU here and on CUDA where one is."""

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from securefed.primitives.quantize import ROUNDING_CHUNK, from_ring, plan_quantization, quantize, quantize_draws
from securefed.primitives.rng import DeterministicEntropy, PrefetchedEntropy
from securefed.privacy import device_encode
from securefed.privacy.clipping import l2_clip
from securefed.privacy.device_encode import clip_and_quantize_on_device

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def _host(delta: np.ndarray, weight: float, plan, seed: int):
    x, info = l2_clip(delta * np.float32(weight), plan.clip)
    return quantize(x, plan, DeterministicEntropy.from_int(seed)), info


def _exact_delta(d: int, nonzero: int, rng) -> np.ndarray:
    """Entries in {0, ±0.5, ±0.75, ±1.5}: every float64 sum of their squares is exact in any order, so
    the host's and the device's norms agree to the bit even when the update is clipped."""
    delta = np.zeros(d, dtype=np.float32)
    idx = rng.choice(d, size=nonzero, replace=False)
    delta[idx] = rng.choice(np.array([-1.5, -0.75, -0.5, 0.5, 0.75, 1.5], dtype=np.float32), size=nonzero)
    return delta


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("ring_bits,clip,weight", [(32, 1000.0, 1.0), (32, 3.0, 0.5), (16, 2.0, 1.0), (20, 50.0, 0.25)])
def test_same_ring_vector_as_the_host_path_across_draws_and_spans(device, ring_bits, clip, weight, monkeypatch):
    # several device spans (shrunk to 2 draws each), a partial last draw; clip binding in two of the cases
    monkeypatch.setattr(device_encode, "_SPAN", 2 * ROUNDING_CHUNK)
    d = 5 * ROUNDING_CHUNK + 12_345
    delta = _exact_delta(d, 4000, np.random.default_rng(ring_bits))
    plan = plan_quantization(clip=clip, ring_bits=ring_bits, max_clients=8)
    host, hinfo = _host(delta, weight, plan, seed=7)
    dev, dinfo = clip_and_quantize_on_device(torch.from_numpy(delta).to(device), weight, plan,
                                             DeterministicEntropy.from_int(7))
    assert dev.dtype == host.dtype == plan.ring.dtype
    assert np.array_equal(dev, host)
    assert dinfo == hinfo
    assert dinfo.clipped == (clip < 40)  # ‖Δ‖ = √(4000·E[x²]) ≈ 60 before the weight


@pytest.mark.parametrize("device", DEVICES)
def test_random_float_updates_match_bit_for_bit_when_not_clipped(device):
    rng = np.random.default_rng(0)
    delta = rng.standard_normal(3 * ROUNDING_CHUNK + 7).astype(np.float32) * 1e-3
    plan = plan_quantization(clip=100.0, ring_bits=32, max_clients=8)
    host, _ = _host(delta, 1.0, plan, seed=3)
    dev, info = clip_and_quantize_on_device(torch.from_numpy(delta).to(device), 1.0, plan, DeterministicEntropy.from_int(3))
    assert not info.clipped
    assert np.array_equal(dev, host)
    # and it decodes to the update within the rounding's resolution
    back = from_ring(dev, plan.ring) / plan.scale
    assert np.max(np.abs(back - delta)) <= 1.0 / plan.scale


def test_the_holders_prefetched_rounding_bits_serve_the_device_path_unchanged():
    d = 2 * ROUNDING_CHUNK + 99
    delta = np.random.default_rng(1).standard_normal(d).astype(np.float32)
    plan = plan_quantization(clip=1e4, ring_bits=32, max_clients=4)
    with ThreadPoolExecutor(1) as pool:
        pre = PrefetchedEntropy(DeterministicEntropy.from_int(5), quantize_draws(d), pool)
        dev, _ = clip_and_quantize_on_device(torch.from_numpy(delta), 1.0, plan, pre)
    host, _ = _host(delta, 1.0, plan, seed=5)
    assert np.array_equal(dev, host)


def test_the_input_is_not_modified_and_bad_updates_fail_closed():
    delta = torch.full((1000,), 0.5)
    before = delta.clone()
    plan = plan_quantization(clip=1.0, ring_bits=32, max_clients=4)
    _, info = clip_and_quantize_on_device(delta, 1.0, plan, DeterministicEntropy.from_int(0))
    assert info.clipped and torch.equal(delta, before)
    bad = delta.clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        clip_and_quantize_on_device(bad, 1.0, plan, DeterministicEntropy.from_int(0))
    with pytest.raises(ValueError, match="flat float32"):
        clip_and_quantize_on_device(delta.double(), 1.0, plan, DeterministicEntropy.from_int(0))


@settings(max_examples=40, deadline=None)
@given(d=st.integers(1, 3000), ring_bits=st.sampled_from([16, 24, 32]), clients=st.integers(2, 100),
       scale=st.floats(1e-6, 10.0), clip=st.floats(0.01, 100.0), weight=st.sampled_from([1.0, 0.5, 0.3, 2.0]),
       seed=st.integers(0, 2**32 - 1))
def test_property_host_and_device_agree_and_respect_the_bound(d, ring_bits, clients, scale, clip, weight, seed):
    delta = (np.random.default_rng(seed).standard_normal(d) * scale).astype(np.float32)
    plan = plan_quantization(clip=clip, ring_bits=ring_bits, max_clients=clients)
    host, hinfo = _host(delta, weight, plan, seed)
    dev, dinfo = clip_and_quantize_on_device(torch.from_numpy(delta), weight, plan, DeterministicEntropy.from_int(seed))
    q = from_ring(dev, plan.ring).astype(np.float64)
    assert np.sqrt(q @ q) <= plan.l2_bound(d)                 # what the accountant assumes (dp.md §6.4)
    if not dinfo.clipped:                                      # same norm to the bit only when nothing is rescaled
        assert np.array_equal(dev, host)
    else:   # the scale factor may differ in its last bit: every coordinate within one unit
        assert np.max(np.abs(from_ring(dev, plan.ring) - from_ring(host, plan.ring))) <= 1


@pytest.mark.parametrize("excess", [0.0, 1e-7, 5e-7, 1e-6, 1e-3])
def test_updates_at_or_just_above_the_clip_are_rescaled_and_never_exceed_it(excess):
    # the band where a missing margin would let float32 rounding push ‖x‖ over C and wrap the ring at max_clients
    rng = np.random.default_rng(int(excess * 1e9))
    clip = 1.0
    delta = rng.standard_normal(50_000).astype(np.float32)
    delta *= np.float32(clip * (1 + excess) / np.linalg.norm(delta.astype(np.float64)))
    plan = plan_quantization(clip=clip, ring_bits=16, max_clients=100)
    ring, info = clip_and_quantize_on_device(torch.from_numpy(delta), 1.0, plan, DeterministicEntropy.from_int(9))
    q = from_ring(ring, plan.ring)
    assert np.abs(q).max() <= plan.max_abs_per_client                       # no coordinate can wrap the ring
    assert np.sqrt((q.astype(np.float64) ** 2).sum()) <= plan.l2_bound(delta.size)
    host, hinfo = _host(delta, 1.0, plan, 9)
    assert info.clipped == hinfo.clipped
