"""AES-256-CTR mask PRG mapped exactly uniformly into Z_{2^k} (protocols/secagg.md §3.3).

The keystream (NIST SP 800-38A §6.5, initial counter block 0^128) is written straight into a
preallocated numpy buffer with ``update_into`` — no per-call allocation — and read as little-endian
uint16 (k ≤ 16) or uint32 words. 2^k divides the word range, so keeping the low k bits is exactly
uniform. Callers that accumulate several streams mod 2^k may skip the per-stream reduction and
reduce once at the end (reduction is a ring homomorphism Z_{2^32} → Z_{2^k}).

Parallel expansion: in CTR mode keystream block b is AES_key(counter = b), so the words of a vector
range [lo, hi) whose byte offset is a multiple of 16 come from a stream started at counter block
``lo·itemsize / 16`` (``MaskStream(key, block=…)``). ``accumulate_masks(…, executor=)`` hands such
16-byte-aligned ranges to a caller's thread pool (AES-CTR and numpy adds release the GIL); every
element still comes from the same keystream bytes, so the result is bit-identical to the serial loop.
This module starts no threads itself.
"""

from __future__ import annotations

import sys
from concurrent.futures import Executor, Future

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from securefed.primitives.quantize import RingSpec

__all__ = ["MaskStream", "expand", "expand_into", "accumulate_masks", "submit_accumulate"]

_ZERO_IV = b"\x00" * 16
if sys.byteorder != "little":  # pragma: no cover - we only run on little-endian hosts
    raise ImportError("securefed.primitives.prg assumes a little-endian host")


class MaskStream:
    """One PRG stream: successive ``fill`` calls continue the same keystream (chunking-invariant)."""

    def __init__(self, key: bytes, *, block: int = 0, _initial_counter: bytes | None = None) -> None:
        """``block``: start at keystream block ``block`` (byte 16·block) instead of block 0.
        _initial_counter is injectable only so tests can replay NIST SP 800-38A F.5.5."""
        if not isinstance(key, (bytes, bytearray)):
            raise TypeError("key must be bytes")
        if len(key) != 32:
            raise ValueError("key must be 32 bytes (AES-256)")
        if isinstance(block, bool) or not isinstance(block, int) or not 0 <= block < 1 << 128:
            raise ValueError("block must be an int in [0, 2^128)")
        if _initial_counter is None:
            _initial_counter = block.to_bytes(16, "big")   # the counter block is one 128-bit big-endian integer
        elif block:
            raise ValueError("give block or _initial_counter, not both")
        if not isinstance(_initial_counter, bytes) or len(_initial_counter) != 16:
            raise ValueError("initial counter block must be 16 bytes")
        self._enc = Cipher(algorithms.AES(bytes(key)), modes.CTR(_initial_counter)).encryptor()

    def fill(self, out: np.ndarray, zeros: memoryview | None = None) -> np.ndarray:
        """Overwrite the contiguous 1-D ``out`` (uint16/uint32) with the next keystream words.

        ``zeros`` is an optional all-zero buffer of at least ``out.nbytes`` bytes (reused by hot loops).
        """
        if not isinstance(out, np.ndarray) or out.dtype not in (np.uint16, np.uint32) or out.ndim != 1:
            raise TypeError("out must be a 1-D uint16 or uint32 numpy array")
        if not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError("out must be contiguous and writeable")
        nbytes = out.nbytes
        src = zeros[:nbytes] if zeros is not None else memoryview(bytes(nbytes))
        if len(src) != nbytes:
            raise ValueError("zeros buffer is too small")
        self._enc.update_into(src, memoryview(out).cast("B"))
        return out


def expand_into(key: bytes, out: np.ndarray, ring: RingSpec) -> np.ndarray:
    """Fill ``out`` (dtype ring.dtype) with PRG(key) reduced into Z_{2^k}; returns ``out``."""
    if out.dtype != ring.dtype:
        raise TypeError(f"out must have dtype {ring.dtype}, got {out.dtype}")
    MaskStream(key).fill(out)
    return ring.reduce(out)


def expand(key: bytes, length: int, ring: RingSpec) -> np.ndarray:
    """PRG(key) as a new vector of ``length`` ring elements."""
    if not isinstance(length, int) or isinstance(length, bool) or length < 0:
        raise ValueError("length must be a non-negative int")
    return expand_into(key, np.empty(length, dtype=ring.dtype), ring)


def _check_acc(acc: np.ndarray, keys_and_signs, ring: RingSpec, chunk_elements: int) -> None:
    if not isinstance(acc, np.ndarray) or acc.dtype != ring.dtype or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise TypeError(f"acc must be a contiguous 1-D array of dtype {ring.dtype}")
    if not isinstance(chunk_elements, int) or isinstance(chunk_elements, bool) or chunk_elements < 1:
        raise ValueError("chunk_elements must be a positive int")
    if any(sign not in (1, -1) for _, sign in keys_and_signs):
        raise ValueError("sign must be +1 or -1")


# The keystream is written into a scratch block and added from it at once: a block that stays in a core's L2
# cache makes the add read cache, not memory, and a small scratch costs few page faults. One core, P = 1M words,
# 8 keys: 4.9 ms with 1 MiB blocks against 8.4 ms with the whole 4 MiB chunk; P = 10M: 59.6 against 62.6 ms
# (benchmarks/secagg/results.md, RESULTS.md (zq13)). The tasks' ranges (chunk_elements) are unchanged by it.
CACHE_BLOCK_BYTES = 1 << 20


def _block_words(step: int, itemsize: int) -> int:
    return max(1, min(step, CACHE_BLOCK_BYTES // itemsize))


def _accumulate_range(acc: np.ndarray, keys_and_signs, lo: int, hi: int, step: int) -> None:
    """acc[lo:hi] += Σ sign · PRG(key)[lo:hi] (wrapping mod 2^16 / 2^32); lo·itemsize is a multiple of 16."""
    item = acc.dtype.itemsize
    step = _block_words(step, item)                             # the stream runs on across blocks: any size is exact
    scratch = np.empty(min(step, hi - lo), dtype=acc.dtype)     # one cache block per task in flight
    zeros = memoryview(bytearray(scratch.nbytes))
    for key, sign in keys_and_signs:
        stream = MaskStream(key, block=lo * item // 16)
        op = np.add if sign == 1 else np.subtract
        for a in range(lo, hi, step):  # loop over chunks, never over elements
            b = min(a + step, hi)
            ks = stream.fill(scratch[: b - a], zeros)
            op(acc[a:b], ks, out=acc[a:b])


def submit_accumulate(acc: np.ndarray, keys_and_signs: list[tuple[bytes, int]], ring: RingSpec, *,
                      chunk_elements: int, executor: Executor) -> list[Future]:
    """Start acc += Σ sign · PRG(key) on ``executor``, one task per 16-byte-aligned range of about
    ``chunk_elements`` words (each task covers its range for every key; no two tasks touch one word).

    Returns the tasks' futures; ``acc`` holds the sum (wrapping, NOT yet reduced mod 2^k) once all are
    done. The caller owns ``acc`` meanwhile: it must not read or write it before every future is done.
    """
    _check_acc(acc, keys_and_signs, ring, chunk_elements)
    keys = list(keys_and_signs)
    n, per_block = acc.shape[0], 16 // acc.dtype.itemsize
    step = -(-chunk_elements // per_block) * per_block           # a whole number of AES blocks
    return [executor.submit(_accumulate_range, acc, keys, lo, min(lo + step, n), step) for lo in range(0, n, step)]


def accumulate_masks(acc: np.ndarray, keys_and_signs: list[tuple[bytes, int]], ring: RingSpec, *, chunk_elements: int,
                     executor: Executor | None = None) -> np.ndarray:
    """acc += Σ sign · PRG(key) (mod 2^k), in place, streaming over chunks; returns ``acc``.

    Memory: one scratch chunk (chunk_elements words) + one zero buffer per task in flight; numpy
    uint16/uint32 adds wrap mod 2^16/2^32 and the final ``ring.reduce`` maps to Z_{2^k}. With an
    ``executor`` the ranges run on its threads (``submit_accumulate``); the result is the same bits.
    """
    _check_acc(acc, keys_and_signs, ring, chunk_elements)
    if executor is None:
        n = acc.shape[0]
        _accumulate_range(acc, keys_and_signs, 0, n, min(chunk_elements, max(n, 1)))
    else:
        futures = submit_accumulate(acc, keys_and_signs, ring, chunk_elements=chunk_elements, executor=executor)
        for f in futures:
            f.result()                                            # re-raises a task's error
    return ring.reduce(acc)


# ---------------------------------------------------------------------------------------------------
# Positional expansion (issue 17): a holder sharded over several GPUs masks each rank's slice of the flat
# vector on that rank. Word i of a stream is bytes [w·i, w·(i+1)) of the keystream (w = 2 or 4), and CTR
# keystream block b is AES_K(counter 0^128 + b) (SP 800-38A §6.5; the counter is one 128-bit big-endian
# integer, as OpenSSL increments it), so words [lo, hi) are computed directly: start the counter at block
# ⌊w·lo / 16⌋ and drop the first (w·lo mod 16) bytes. Nothing before lo is generated.

__all__ += ["stream_at", "expand_range", "accumulate_masks_at"]  # noqa: PLE0605 (appended: additive section)


def stream_at(key: bytes, byte_offset: int) -> MaskStream:
    """A MaskStream positioned at ``byte_offset`` bytes into PRG(key)'s keystream."""
    if not isinstance(byte_offset, int) or isinstance(byte_offset, bool) or byte_offset < 0:
        raise ValueError("byte_offset must be a non-negative int")
    block, skip = divmod(byte_offset, 16)
    if block >= 1 << 128:
        raise ValueError("byte_offset is past the end of the 2^128-block CTR keystream")
    stream = MaskStream(key, _initial_counter=block.to_bytes(16, "big"))
    if skip:
        stream._enc.update(bytes(skip))  # the unaligned head of the first block is discarded
    return stream


def _check_range(lo: int, hi: int) -> None:
    for name, v in (("lo", lo), ("hi", hi)):
        if not isinstance(v, int) or isinstance(v, bool):
            raise TypeError(f"{name} must be an int")
    if not 0 <= lo <= hi:
        raise ValueError(f"need 0 <= lo <= hi, got lo={lo}, hi={hi}")


def expand_range(key: bytes, lo: int, hi: int, ring: RingSpec) -> np.ndarray:
    """Words [lo, hi) of PRG(key) in Z_{2^k}: equal to ``expand(key, hi, ring)[lo:hi]`` without the prefix."""
    _check_range(lo, hi)
    out = np.empty(hi - lo, dtype=ring.dtype)
    stream_at(key, lo * ring.bytes_per_element).fill(out)
    return ring.reduce(out)


def accumulate_masks_at(acc: np.ndarray, offset: int, keys_and_signs: list[tuple[bytes, int]], ring: RingSpec, *,
                        chunk_elements: int) -> np.ndarray:
    """acc += Σ sign · PRG(key)[offset : offset + len(acc)] (mod 2^k), in place; returns ``acc``.

    ``acc`` is the slice of a flat vector that starts at position ``offset``: masking every slice of a
    partition this way and concatenating gives exactly ``accumulate_masks`` of the whole vector.
    Memory as accumulate_masks: one scratch chunk + one zero buffer.
    """
    if not isinstance(acc, np.ndarray) or acc.dtype != ring.dtype or acc.ndim != 1 or not acc.flags.c_contiguous:
        raise TypeError(f"acc must be a contiguous 1-D array of dtype {ring.dtype}")
    _check_range(offset, offset + acc.shape[0] if isinstance(offset, int) else 0)
    if not isinstance(chunk_elements, int) or isinstance(chunk_elements, bool) or chunk_elements < 1:
        raise ValueError("chunk_elements must be a positive int")
    n = acc.shape[0]
    step = min(_block_words(chunk_elements, acc.dtype.itemsize), max(n, 1))
    scratch = np.empty(step, dtype=ring.dtype)
    zeros = memoryview(bytearray(scratch.nbytes))
    for key, sign in keys_and_signs:
        if sign not in (1, -1):
            raise ValueError("sign must be +1 or -1")
        stream = stream_at(key, offset * ring.bytes_per_element)
        op = np.add if sign == 1 else np.subtract
        for lo in range(0, n, step):  # loop over chunks, never over elements
            hi = min(lo + step, n)
            op(acc[lo:hi], stream.fill(scratch[: hi - lo], zeros), out=acc[lo:hi])
    return ring.reduce(acc)
