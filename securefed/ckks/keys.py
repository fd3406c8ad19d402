"""TenSEAL CKKS contexts: generation (leader holder), serialisation, and strict checks on receipt.

protocols/ckks.md §3. Key generation uses SEAL's own CSPRNG (seeded from the OS inside SEAL): it
cannot take an ``Entropy``, so contexts are not reproducible from the run seed; everything else
(nonces, long-term keys in simulation, noise flooding) is.

Two loaders, one per role:
- :func:`load_public_context` is the ONLY way the server side turns bytes into a context; it
  refuses any context that carries a secret key, and any context whose parameters differ from the
  policy (ring degree, modulus chain, scale).
- :func:`load_secret_context` is the holder side; it requires the secret key and the same parameters.
"""

from __future__ import annotations

import functools
import hashlib

import tenseal as ts
import tenseal.sealapi as sealapi

from securefed.ckks.routing import RoutingPolicy

__all__ = [
    "ContextRejected",
    "MAX_CONTEXT_BYTES",
    "generate_secret_context",
    "secret_context_bytes",
    "public_context_bytes",
    "key_id_of",
    "load_public_context",
    "load_secret_context",
]

MAX_CONTEXT_BYTES = 64 << 20  # refuse absurd inputs before handing them to the C++ parser


class ContextRejected(ValueError):
    """A serialised CKKS context was refused (secret key where none may be, wrong parameters...)."""


@functools.lru_cache(maxsize=8)
def _expected_parms(n: int, bit_sizes: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(key_parms_id, first_parms_id) SEAL derives for (N, coeff modulus): a hash of the parameters.

    Built with sealapi alone, so no key material is ever generated on the checking side.
    """
    parms = sealapi.EncryptionParameters(sealapi.SCHEME_TYPE.CKKS)
    parms.set_poly_modulus_degree(n)
    parms.set_coeff_modulus(sealapi.CoeffModulus.Create(n, list(bit_sizes)))
    ctx = sealapi.SEALContext(parms, True, sealapi.SEC_LEVEL_TYPE.TC128)  # enforces 128-bit table
    if not ctx.parameters_set():
        raise ValueError(f"SEAL refused N={n}, coeff_mod_bit_sizes={bit_sizes}")
    return tuple(ctx.key_parms_id()), tuple(ctx.first_parms_id())


def expected_first_parms_id(policy: RoutingPolicy) -> tuple[int, ...]:
    return _expected_parms(policy.poly_modulus_degree, policy.coeff_mod_bit_sizes)[1]


def generate_secret_context(policy: RoutingPolicy) -> ts.Context:
    """Leader holder only (§3.1): fresh CKKS keys for ``policy``; no relin/galois keys (adds only)."""
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=policy.poly_modulus_degree,
        coeff_mod_bit_sizes=list(policy.coeff_mod_bit_sizes),
    )
    ctx.global_scale = float(2**policy.scale_bits)
    return ctx


def secret_context_bytes(ctx: ts.Context) -> bytes:
    """Serialised context WITH the secret key. MUST only ever be passed to keyshare.seal_share."""
    if not ctx.has_secret_key():
        raise ValueError("ctx has no secret key")
    return ctx.serialize(save_public_key=True, save_secret_key=True, save_galois_keys=False, save_relin_keys=False)


def public_context_bytes(ctx: ts.Context) -> bytes:
    """The public context the server receives: parameters, scale and public key, nothing secret."""
    pub = ctx.copy()
    pub.make_context_public()  # drops the secret key (TenSEAL)
    data = pub.serialize(save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False)
    return data


def key_id_of(public_bytes: bytes) -> str:
    """SHA-256 hex of the serialised public context; names a key generation in labels (§6)."""
    return hashlib.sha256(public_bytes).hexdigest()


def _load(data: bytes, what: str) -> ts.Context:
    if not isinstance(data, bytes):
        raise TypeError(f"{what} must be bytes")
    if not 0 < len(data) <= MAX_CONTEXT_BYTES:
        raise ContextRejected(f"{what}: size {len(data)} outside (0, {MAX_CONTEXT_BYTES}]")
    try:
        return ts.context_from(data)
    except Exception:  # the C++/protobuf parser raises assorted types
        raise ContextRejected(f"{what}: not a valid serialised TenSEAL context") from None


def _check_parameters(ctx: ts.Context, policy: RoutingPolicy, what: str) -> None:
    key_id, first_id = _expected_parms(policy.poly_modulus_degree, policy.coeff_mod_bit_sizes)
    data = ctx.seal_context().data
    if tuple(data.key_parms_id()) != key_id or tuple(data.first_parms_id()) != first_id:
        raise ContextRejected(
            f"{what}: parameters differ from the policy (N={policy.poly_modulus_degree},"
            f" coeff_mod_bit_sizes={policy.coeff_mod_bit_sizes})"
        )
    if int(data.key_context_data().parms().scheme()) != int(sealapi.SCHEME_TYPE.CKKS):
        raise ContextRejected(f"{what}: scheme is not CKKS")
    if ctx.global_scale != float(2**policy.scale_bits):
        raise ContextRejected(f"{what}: scale {ctx.global_scale} != 2^{policy.scale_bits}")


def load_public_context(data: bytes, policy: RoutingPolicy) -> ts.Context:
    """Server side (§3.3): deserialise and refuse secret keys and unexpected parameters."""
    ctx = _load(data, "public context")
    if ctx.has_secret_key() or ctx.is_private() or not ctx.is_public():
        del ctx  # drop the refused key material at once
        raise ContextRejected("public context: carries a secret key; the server refuses it")
    if not ctx.has_public_key():
        raise ContextRejected("public context: no public key")
    _check_parameters(ctx, policy, "public context")
    return ctx


def load_secret_context(data: bytes, policy: RoutingPolicy) -> ts.Context:
    """Holder side (§3.2): the context a key share carries; MUST have the secret key."""
    ctx = _load(data, "secret context")
    if not ctx.has_secret_key():
        raise ContextRejected("secret context: has no secret key")
    _check_parameters(ctx, policy, "secret context")
    return ctx
