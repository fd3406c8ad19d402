"""The holder's own floor (audit SEC-11): the secure-aggregation round must run on the cohort the
floor was checked against."""

import pytest

from securefed.runtime.netclient import PolicyRefused, _check_round_start
from securefed.secagg.messages import RoundStart, encode

MANIFEST = {"round": 3, "cohort": [1, 2, 3, 4], "ring_bits": 32}


def _start(**kw) -> bytes:
    fields = dict(context=b"ctx", round_index=3, cohort=(1, 2, 3, 4), ring_bits=32, length=8, threshold=3,
                  min_survivors=3, degree=3)
    fields.update(kw)
    return encode(RoundStart(**fields))


def test_round_start_on_the_manifest_cohort_is_accepted():
    _check_round_start(_start(), MANIFEST)


@pytest.mark.parametrize("kw", [{"cohort": tuple(range(1, 201))}, {"cohort": (1, 2, 3), "degree": 2, "threshold": 2, "min_survivors": 2},
                                {"round_index": 4},
                                {"ring_bits": 16}])
def test_round_start_that_differs_from_the_manifest_is_refused(kw):
    with pytest.raises(PolicyRefused):
        _check_round_start(_start(**kw), MANIFEST)


def test_undecodable_round_start_is_refused():
    with pytest.raises(PolicyRefused, match="could not be decoded"):
        _check_round_start(b"\x00garbage", MANIFEST)
