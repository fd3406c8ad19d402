"""The versioned, validating serializer (protocols/secagg.md §7)."""

import dataclasses

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from securefed.secagg import MessageError, decode, encode
from securefed.secagg.messages import MaskedBuffer, MaskedInput, RoundStart, SurvivorList, UnmaskShares

from tests.secagg.samples import SAMPLES


def same(a, b):
    if isinstance(a, MaskedInput):
        return (a.sender, a.ring_bits) == (b.sender, b.ring_bits) and np.array_equal(a.vector, b.vector)
    return a == b


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_and_every_truncation_rejected(msg):
    data = encode(msg)
    assert data[:4] == b"SFSA" and data[4] == 1
    assert same(decode(data), msg)
    for cut in range(len(data)):
        with pytest.raises(MessageError):
            decode(data[:cut])
    with pytest.raises(MessageError, match="trailing"):
        decode(data + b"\x00")


def test_header_checks():
    data = encode(SAMPLES[0])
    for bad, match in ((b"XXXX" + data[4:], "magic"), (data[:4] + b"\x02" + data[5:], "version"),
                       (data[:5] + b"\x63" + data[6:], "type")):
        with pytest.raises(MessageError, match=match):
            decode(bad)
    with pytest.raises(MessageError):
        decode("text")


def test_field_validation():
    with pytest.raises(MessageError, match="strictly increasing"):
        encode(SurvivorList((3, 1)))
    with pytest.raises(MessageError, match="strictly increasing"):
        encode(SurvivorList((1, 1)))
    with pytest.raises(MessageError, match="holder id"):
        encode(SurvivorList((0,)))
    with pytest.raises(MessageError, match="ring_bits"):
        encode(dataclasses.replace(SAMPLES[0], ring_bits=40))
    with pytest.raises(MessageError, match="thresholds"):
        encode(dataclasses.replace(SAMPLES[0], threshold=9))
    with pytest.raises(MessageError, match="share must be"):
        encode(UnmaskShares(3, ((1, 0, b"\x00" * 65),)))
    with pytest.raises(MessageError, match="kind"):
        encode(UnmaskShares(3, ((1, 2, b"\x00" * 66),)))
    with pytest.raises(MessageError, match="c_public"):
        encode(dataclasses.replace(SAMPLES[1], c_public=b"\x01" * 31))
    with pytest.raises(MessageError, match="context"):
        encode(dataclasses.replace(SAMPLES[0], context=b"x" * 5000))
    with pytest.raises(TypeError):
        encode("not a message")


def test_vector_encoding_sizes_and_ring_range():
    # 4 bytes per element at k in (16, 32], 2 bytes at k <= 16: upload ~1.0x fp32 / 0.5x
    v32 = encode(MaskedInput(1, 32, np.zeros(1000, np.uint32)))
    v16 = encode(MaskedInput(1, 16, np.zeros(1000, np.uint16)))
    assert len(v32) == 19 + 4000 and len(v16) == 19 + 2000
    with pytest.raises(MessageError, match="1-D"):
        encode(MaskedInput(1, 16, np.zeros(10, np.uint32)))
    bad = encode(MaskedInput(1, 32, np.full(4, 1 << 20, np.uint32)))
    bad = bad[:10] + bytes([20]) + bad[11:]  # relabel as k=20: elements 2^20 are outside Z_2^20
    with pytest.raises(MessageError, match="outside"):
        decode(bad)
    ok = decode(encode(MaskedInput(1, 20, np.full(4, (1 << 20) - 1, np.uint32))))
    assert ok.vector.dtype == np.dtype("<u4") and not ok.vector.flags.writeable


@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 3000), bits=st.sampled_from([16, 20, 32]), step=st.sampled_from([1, 2, 3]), seed=st.integers(0, 2**32 - 1))
def test_masked_input_wire_bytes_are_the_spec_layout(n, bits, step, seed):
    # secagg.md §7: MAGIC, version, type, sender u32, k u8, length u64 big-endian, the ring words little-endian.
    # encode joins the prefix and the vector's own buffer once; a strided view encodes as its contiguous copy.
    dt = np.uint16 if bits <= 16 else np.uint32
    base = np.random.default_rng(seed).integers(0, 1 << bits, n * step, dtype=np.uint64).astype(dt)
    v = base[::step]
    data = encode(MaskedInput(7, bits, v))
    want = b"SFSA" + bytes([1, MaskedInput.TYPE]) + (7).to_bytes(4, "big") + bytes([bits]) \
        + len(v).to_bytes(8, "big") + np.ascontiguousarray(v).astype("<" + np.dtype(dt).str[1:]).tobytes()
    assert type(data) is bytes and data == want
    assert same(decode(data), MaskedInput(7, bits, v))
    with pytest.raises(MessageError, match="1-D"):
        encode(MaskedInput(7, bits, v.astype(np.dtype(dt).newbyteorder(">"))))
    if n:   # formed in a MaskedBuffer: the same bytes, handed out in place (read-only, words cache-line aligned)
        buf = MaskedBuffer(n, bits)
        assert not buf.vector.any() and buf.vector.ctypes.data % 64 == 0
        buf.vector[:] = v
        view = encode(MaskedInput(7, bits, buf.vector, buffer=buf))
        assert isinstance(view, memoryview) and view.readonly and bytes(view) == want
        assert np.shares_memory(np.frombuffer(view, np.uint8), buf.vector)
        assert same(decode(view), MaskedInput(7, bits, v))
        other = MaskedBuffer(n, bits)        # a vector that is not the buffer's own: joined, as before
        assert type(encode(MaskedInput(7, bits, v, buffer=other))) is bytes
        wrong = MaskedBuffer(n, 16 if bits > 16 else 32)   # the buffer of another ring: joined (and checked)
        assert type(encode(MaskedInput(7, bits, v, buffer=wrong))) is bytes


def test_masked_buffer_refuses_a_bad_length():
    for bad in (0, -1, True, 2.0):
        with pytest.raises(ValueError):
            MaskedBuffer(bad, 32)


def test_huge_declared_lengths_rejected_without_allocation():
    data = bytearray(encode(MaskedInput(1, 32, np.zeros(2, np.uint32))))
    data[11:19] = (1 << 60).to_bytes(8, "big")
    with pytest.raises(MessageError, match="truncated"):
        decode(bytes(data))
    data = bytearray(encode(SurvivorList((1,))))
    data[6:10] = (1 << 30).to_bytes(4, "big")
    with pytest.raises(MessageError, match="too long"):
        decode(bytes(data))


@settings(max_examples=25, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(SAMPLES))
def test_fuzz_only_message_error(noise, msg):
    data = bytearray(encode(msg))
    for k, b in enumerate(noise[:8]):
        data[(k * 37 + b) % len(data)] ^= b | 1
    for blob in (bytes(data), b"SFSA\x01" + noise, noise):
        try:
            decode(blob)
        except MessageError:
            pass


def test_round_start_context_binary_safe():
    m = RoundStart(bytes(range(256)), 0, (1, 2, 3), 16, 1, 2, 2, 2)
    assert decode(encode(m)) == m


def test_decode_parses_a_read_only_view_in_place_and_copies_a_writable_buffer():
    buf = MaskedBuffer(10, 32)
    buf.vector[:] = np.arange(10, dtype=np.uint32)
    view = encode(MaskedInput(3, 32, buf.vector, buffer=buf))
    assert np.shares_memory(decode(view).vector, buf.vector)              # no P-word copy on the server's side
    data = bytearray(view)
    m = decode(memoryview(data))
    data[-4:] = b"\xff\xff\xff\xff"                                        # the sender's buffer changes afterwards
    assert m.vector[-1] == 9 and not m.vector.flags.writeable               # what was parsed and checked does not


def test_an_encoded_masked_buffer_is_sealed():
    """What a receiver keeps as its own undo record cannot change after it is handed out (transport.md §4.3)."""
    buf = MaskedBuffer(8, 32)
    buf.vector[:] = 7
    view = encode(MaskedInput(2, 32, buf.vector, buffer=buf))
    for a in (buf.vector, buf.frame):
        with pytest.raises(ValueError):
            a[0] = 1
    assert bytes(encode(MaskedInput(2, 32, buf.vector, buffer=buf))) == bytes(view)   # the same message again
    with pytest.raises(MessageError, match="sealed"):
        encode(MaskedInput(3, 32, buf.vector, buffer=buf))
