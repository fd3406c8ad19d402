import pytest

from securefed.configio import ConfigError, from_dict
from securefed.secagg import SecAggConfig, threshold_for


def test_threshold_rule_is_a_strict_majority():
    # n=10, f=0.5: max(2, 10//2+1, ceil(5)) = 6
    assert SecAggConfig().thresholds(10).threshold == 6
    assert SecAggConfig().thresholds(10).min_survivors == 6
    assert SecAggConfig(threshold_fraction=0.8).thresholds(10).threshold == 8
    for m in range(2, 200):
        for f in (0.5, 0.66, 1.0):
            t = threshold_for(m, f)
            assert m / 2 < t <= max(m, 2) and t >= f * m - 1e-9


def test_secagg_plus_thresholds():
    th = SecAggConfig(neighbours=0).thresholds(100)   # auto: d=40, m=41 -> t=21; t_min over n=100 -> 51
    assert (th.degree, th.threshold, th.min_survivors) == (40, 21, 51)
    assert SecAggConfig(neighbours=4).thresholds(10).threshold == 3  # m=5 -> 3


def test_loadable_by_configio():
    cfg = from_dict(SecAggConfig, {"ring_bits": 16, "threshold_fraction": 0.6, "neighbours": 8, "chunk_elements": 4096})
    assert cfg == SecAggConfig(16, 0.6, 8, 4096)
    assert from_dict(SecAggConfig, {"neighbours": None}).neighbours is None
    with pytest.raises(ConfigError, match="ring_bits"):
        from_dict(SecAggConfig, {"ring_bits": 40})
    with pytest.raises(ConfigError, match="unknown"):
        from_dict(SecAggConfig, {"ringbits": 16})


@pytest.mark.parametrize("kw,err", [(dict(ring_bits=15), ValueError), (dict(ring_bits=33), ValueError),
                                    (dict(ring_bits=True), TypeError), (dict(threshold_fraction=0.4), ValueError),
                                    (dict(threshold_fraction=1.1), ValueError), (dict(neighbours=1), ValueError),
                                    (dict(neighbours=-3), ValueError), (dict(chunk_elements=0), ValueError)])
def test_rejects_bad_values(kw, err):
    with pytest.raises(err, match=next(iter(kw))):
        SecAggConfig(**kw)


def test_tiny_cohort_refused():
    with pytest.raises(ValueError, match="at least 3"):
        SecAggConfig().thresholds(2)
