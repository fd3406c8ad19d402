"""One well-formed sample of every message type (for serializer and transition-table tests)."""

import numpy as np

from securefed.secagg.messages import (CIPHERTEXT_BYTES, AdvertiseKeys, ConsistencySignature, ForwardedShares, KeyRoster,
                                       MaskedInput, RoundStart, ShareKeys, SurvivorList, UnmaskRequest, UnmaskShares)

ADVERT = AdvertiseKeys(3, b"\x09" * 32, b"\x0a" * 32, b"\x0b" * 32, b"\x0c" * 64)
SAMPLES = [
    RoundStart(b"ctx", 7, (1, 2, 3, 4), 32, 5, 3, 3, 3),
    ADVERT,
    KeyRoster((ADVERT, AdvertiseKeys(4, b"\x01" * 32, b"\x02" * 32, b"\x03" * 32, b"\x04" * 64))),
    ShareKeys(3, ((1, b"\x05" * CIPHERTEXT_BYTES), (2, b"\x06" * CIPHERTEXT_BYTES))),
    ForwardedShares(((2, b"\x07" * CIPHERTEXT_BYTES),)),
    MaskedInput(3, 32, np.arange(5, dtype=np.uint32)),
    SurvivorList((1, 3, 4)),
    ConsistencySignature(3, b"\x0d" * 64),
    UnmaskRequest((1, 3, 4), (2,), ((1, b"\x0e" * 64), (3, b"\x0f" * 64))),
    UnmaskShares(3, ((1, 0, b"\x00" * 66), (2, 1, b"\x01" * 66))),
]
