"""Masking off the critical path (protocols/secagg.md §6.5): pre-expanded masks, a late input and threaded
unmasking change when the work is done, never a byte of what is sent or summed.

Each comparison runs one seeded round twice and compares the transcripts — every byte the server
received, masked inputs included — so "the same output" means the same MaskedInput bytes, not only the
same sum.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from securefed.primitives.prg import MaskStream, accumulate_masks, expand
from securefed.primitives.quantize import RingSpec
from securefed.primitives.rng import DeterministicEntropy
from securefed.secagg import DropoutPlan, SecAggClient, SecAggConfig, SecAggServer, UnexpectedMessage, run_secagg_round
from securefed.secagg.driver import Stage
from securefed.secagg.messages import MaskedInput, decode

from .helpers import CTX, federation, make_inputs, ring_sum


@pytest.fixture(scope="module")
def pool():
    with ThreadPoolExecutor(max_workers=3) as ex:
        yield ex


def _round(tmp_path, name, *, config, dropouts=None, executor=None, late_input=False, n=8, length=203):
    ids, roster = federation(n)
    inputs = make_inputs(n, length, config.ring_bits, seed=3)
    out = run_secagg_round(inputs, config=config, round_index=5, session_context=CTX, identities=ids, roster=roster,
                           entropy_for=lambda i: DeterministicEntropy.from_int(900 + i), dropouts=dropouts,
                           transcript_dir=tmp_path / name, executor=executor, late_input=late_input)
    files = sorted((tmp_path / name).iterdir())
    return out, inputs, {f.name: f.read_bytes() for f in files}


# chunk sizes that are not whole AES blocks, a ring below 32 bits, uint16 words, a SecAgg+ graph
CONFIGS = [SecAggConfig(chunk_elements=5), SecAggConfig(ring_bits=20, chunk_elements=3),
           SecAggConfig(ring_bits=16, chunk_elements=7, neighbours=4)]
# holder 3 advertises keys and vanishes before sharing them (U1 \ U2: its pairs are taken back out of M);
# holder 6 shares its keys and vanishes before its masked input (U2 \ U3: the server unmasks its pairs)
DROPS = [None, DropoutPlan(vanish={3: Stage.SHARE, 6: Stage.MASK})]


@pytest.mark.parametrize("config", CONFIGS, ids=["k32", "k20", "k16-secagg+"])
@pytest.mark.parametrize("dropouts", DROPS, ids=["all", "dropouts-between-shares-and-masked"])
def test_pre_expansion_late_input_and_threaded_unmask_give_the_same_bytes(tmp_path, pool, config, dropouts):
    serial, inputs, want = _round(tmp_path, "serial", config=config, dropouts=dropouts)
    assert np.array_equal(serial.total, ring_sum(inputs, serial.survivors, config.ring_bits))
    if dropouts:
        assert sorted(serial.survivors) == [1, 2, 4, 5, 7, 8]
    masked = [k for k in want if "collect_masked" in k]
    assert len(masked) == len(serial.survivors)
    for late in (False, True):
        out, _, got = _round(tmp_path, f"pool-{late}", config=config, dropouts=dropouts, executor=pool, late_input=late)
        assert got == want                                   # every masked input byte for byte
        assert np.array_equal(out.total, serial.total) and out.survivors == serial.survivors


@pytest.mark.parametrize("config", CONFIGS, ids=["k32", "k20", "k16-secagg+"])
def test_the_host_passes_across_threads_give_the_same_bytes(tmp_path, pool, threaded_spans, config):
    """y = x + M, the copy of a late input and the server's fold cut into spans on 4 threads (spans.py),
    with and without pre-expanded masks: every masked input byte and the sum as one thread makes them."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(threaded_spans, "MIN_SPAN", 1 << 40)     # the reference: one span, this thread
        serial, _, want = _round(tmp_path, "serial", config=config, dropouts=DROPS[1])
    for executor in (None, pool):
        out, _, got = _round(tmp_path, f"spans-{executor is None}", config=config, dropouts=DROPS[1], executor=executor)
        assert got == want and np.array_equal(out.total, serial.total)


def test_a_late_input_without_threads_gives_the_same_bytes(tmp_path):
    config = SecAggConfig(chunk_elements=16)
    _, _, want = _round(tmp_path, "a", config=config, dropouts=DROPS[1])
    _, _, got = _round(tmp_path, "b", config=config, dropouts=DROPS[1], late_input=True)
    assert got == want


@pytest.mark.parametrize("bits,n,chunk", [(32, 1, 1), (32, 1001, 5), (20, 999, 8), (16, 1003, 7), (16, 64, 1 << 20)])
def test_threaded_accumulation_equals_the_serial_loop(pool, bits, n, chunk):
    ring = RingSpec(bits)
    keys = [(bytes([i]) * 32, s) for i, s in zip(range(1, 6), (1, -1, 1, 1, -1))]
    start = make_inputs(1, n, bits, seed=9)[1]
    serial = accumulate_masks(start.copy(), keys, ring, chunk_elements=chunk)
    threaded = accumulate_masks(start.copy(), keys, ring, chunk_elements=chunk, executor=pool)
    assert np.array_equal(serial, threaded)
    # and both are x + Σ sign·PRG(key) computed the plain way
    want = start.astype(np.int64)
    for k, s in keys:
        want += s * expand(k, n, ring).astype(np.int64)
    assert np.array_equal(serial, (want % ring.modulus).astype(ring.dtype))


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32])
def test_a_stream_started_at_a_counter_block_is_that_part_of_the_keystream(dtype):
    key = bytes(range(32))
    whole = MaskStream(key).fill(np.empty(400, dtype=dtype))
    per_block = 16 // np.dtype(dtype).itemsize
    for block in (0, 1, 7, 40):
        part = MaskStream(key, block=block).fill(np.empty(400 - block * per_block, dtype=dtype))
        assert np.array_equal(part, whole[block * per_block:])
    with pytest.raises(ValueError):
        MaskStream(key, block=-1)
    with pytest.raises(ValueError):
        MaskStream(key, block=1, _initial_counter=bytes(16))


def _to_shares(n=4, length=40, executor=None):
    """Clients of a complete round driven up to their ShareKeys; the server waiting for masked inputs."""
    config = SecAggConfig(chunk_elements=4)
    ids, roster = federation(n)
    server = SecAggServer(config=config, cohort=list(ids), vector_length=length, round_index=1, session_context=CTX,
                          roster=roster)
    clients = {i: SecAggClient(i, identity=ids[i], roster=roster, config=config, session_context=CTX, round_index=1,
                               vector=None, length=length, entropy=DeterministicEntropy.from_int(i), executor=executor)
               for i in ids}
    out = {i: server.round_start() for i in ids}
    for _ in range(2):
        for i, data in out.items():
            server.receive(i, clients[i].handle(data))
        out = server.close_stage()
    return clients, out, make_inputs(n, length, 32, seed=1)


def test_forwarded_shares_before_the_input_leave_the_client_as_it_was(pool):
    clients, out, inputs = _to_shares(executor=pool)
    c = clients[1]
    stage = c.stage
    with pytest.raises(UnexpectedMessage):
        c.handle(out[1])
    assert c.stage == stage and c._premask is not None      # nothing changed: the input may still come
    with pytest.raises(ValueError, match="P = 40"):
        c.provide_input(inputs[1][:39])
    with pytest.raises(TypeError):
        c.provide_input(inputs[1].astype(np.uint16))
    c.provide_input(inputs[1])
    with pytest.raises(ValueError, match="given once"):
        c.provide_input(inputs[1])
    assert isinstance(decode(c.handle(out[1])), MaskedInput) and c._premask is None
    with pytest.raises(ValueError, match="no input is accepted"):
        c.provide_input(inputs[1])


def test_length_is_checked_against_the_round_start():
    config = SecAggConfig()
    ids, roster = federation(3)
    server = SecAggServer(config=config, cohort=list(ids), vector_length=10, round_index=1, session_context=CTX,
                          roster=roster)
    c = SecAggClient(1, identity=ids[1], roster=roster, config=config, session_context=CTX, round_index=1, vector=None,
                     length=11, entropy=DeterministicEntropy.from_int(1))
    from securefed.secagg import SecAggAborted

    with pytest.raises(SecAggAborted, match="vector length"):          # C1: P differs from ours
        c.handle(server.round_start())
    with pytest.raises(ValueError, match="length must be a positive int"):
        SecAggClient(1, identity=ids[1], roster=roster, config=config, session_context=CTX, round_index=1,
                     vector=None, entropy=DeterministicEntropy.from_int(1))


def test_closing_or_aborting_erases_the_mask_buffer(pool):
    """C10 for M: a holder that stops after its ShareKeys (refused plan, aborted round) leaks no mask."""
    clients, out, inputs = _to_shares(executor=pool)
    bufs = {i: c._premask.buf for i, c in clients.items()}
    assert all(f.result() is None for f in clients[2]._premask.futures) and bufs[2].any()
    clients[1].close()                                       # the application ends the round
    assert clients[1].stage.value == "aborted" and clients[1]._premask is None and not bufs[1].any()
    with pytest.raises(UnexpectedMessage):
        clients[1].handle(out[1])
    # a MUST-rule abort at ForwardedShares (a sender outside our neighbours) erases it too
    from securefed.secagg import SecAggAborted
    from securefed.secagg.messages import ForwardedShares, encode

    fs = decode(out[2])
    bad = encode(ForwardedShares(tuple(sorted(fs.ciphertexts + ((999, fs.ciphertexts[0][1]),)))))
    clients[2].provide_input(inputs[2])
    with pytest.raises(SecAggAborted):
        clients[2].handle(bad)
    assert clients[2]._premask is None and not bufs[2].any() and clients[2]._x is None


def test_prefetched_rounding_bits_are_the_entropys_own_bytes_in_order(pool):
    """A holder draws quantize's first-try rounding bits while it trains (§6.5): the same quantized vector."""
    from securefed.primitives.quantize import plan_quantization, quantize, quantize_draws
    from securefed.primitives.rng import PrefetchedEntropy

    n = (1 << 18) * 2 + 11
    x = np.random.default_rng(2).standard_normal(n)
    x *= 0.9 / np.linalg.norm(x)
    plan = plan_quantization(clip=1.0, ring_bits=32, max_clients=4)
    want = quantize(x, plan, DeterministicEntropy.from_int(8))
    pre = PrefetchedEntropy(DeterministicEntropy.from_int(8), quantize_draws(n), pool)
    assert np.array_equal(quantize(x, plan, pre, executor=pool), want)
    tail = DeterministicEntropy.from_int(8)
    for size in quantize_draws(n):
        tail.random_bytes(size)
    assert pre.random_bytes(16) == tail.random_bytes(16)          # then the entropy itself, in order
    wrong = PrefetchedEntropy(DeterministicEntropy.from_int(8), [4, 8], pool)
    with pytest.raises(ValueError, match="prefetched"):
        wrong.random_bytes(8)
    wrong.discard()
