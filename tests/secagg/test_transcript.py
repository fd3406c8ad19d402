"""Server view (issue 3 §6): every received byte is written; one masked payload looks uniform."""

import numpy as np
from scipy.stats import chisquare, kstest

from securefed.secagg import DropoutPlan, SecAggConfig, Stage, decode
from securefed.secagg.messages import MaskedInput

from tests.secagg.helpers import ring_sum, run


def _masked_payloads(d):
    return {f.name: decode(f.read_bytes()) for f in sorted(d.iterdir()) if "collect_masked" in f.name}


def test_transcript_holds_every_byte_received(tmp_path):
    out, inputs = run(n=6, length=64, transcript_dir=tmp_path, dropouts=DropoutPlan(malformed={2: Stage.SHARE}))
    files = sorted(tmp_path.iterdir())
    assert sum(f.stat().st_size for f in files) == out.bytes_up  # malformed bytes included
    assert len(files) == 6 + 6 + 5 + 5 + 5
    # the aggregator's output equals the plaintext sum of the survivors' inputs, recomputable from the view
    assert np.array_equal(out.total, ring_sum(inputs, out.survivors))


def test_single_masked_payload_is_indistinguishable_from_uniform(tmp_path):
    # a structured input (all zeros except a ramp) is what an attacker would hope to see through
    p = 1 << 16
    out, inputs = run(n=5, length=p, transcript_dir=tmp_path)
    payloads = _masked_payloads(tmp_path)
    assert len(payloads) == 5
    for name, m in payloads.items():
        assert isinstance(m, MaskedInput)
        v = m.vector
        assert not np.array_equal(v, inputs[m.sender])
        byte_counts = np.bincount(v.view(np.uint8), minlength=256)
        assert chisquare(byte_counts).pvalue > 1e-4, name            # bytes uniform on 0..255
        assert kstest(v / 2.0**32, "uniform").pvalue > 1e-4, name     # words uniform on Z_2^32
        top = np.bincount(v >> np.uint32(24), minlength=256)
        assert chisquare(top).pvalue > 1e-4, name


def test_zero_input_payload_uniform_at_k16(tmp_path):
    from securefed.primitives.rng import DeterministicEntropy
    from securefed.secagg import run_secagg_round
    from tests.secagg.helpers import CTX, federation
    ids, roster = federation(4)
    zeros = {i: np.zeros(1 << 16, np.uint16) for i in ids}
    out = run_secagg_round(zeros, config=SecAggConfig(ring_bits=16), round_index=0, session_context=CTX, identities=ids,
                           roster=roster, entropy_for=lambda i: DeterministicEntropy.from_int(i), transcript_dir=tmp_path)
    assert not out.total.any()
    for m in _masked_payloads(tmp_path).values():
        assert chisquare(np.bincount(m.vector, minlength=1 << 16)).pvalue > 1e-4


def test_payloads_differ_between_rounds_for_the_same_input(tmp_path):
    run(n=4, length=256, round_index=0, seed=1, transcript_dir=tmp_path / "r0")
    run(n=4, length=256, round_index=1, seed=1, transcript_dir=tmp_path / "r1")
    a, b = _masked_payloads(tmp_path / "r0"), _masked_payloads(tmp_path / "r1")
    for (na, ma), (nb, mb) in zip(sorted(a.items()), sorted(b.items())):
        assert ma.sender == mb.sender and not np.array_equal(ma.vector, mb.vector)
