"""SEC-11 / SEC-12: deployment configuration attacks (securefed/audit/deployment_attacks.py).

Both were found VULNERABLE by the first audit run (2026-11-29) and fixed: holders enforce their own
secure-aggregation floor (now federation/holder.py: the Welcome against HolderPolicy, H1, and every
RoundStart against it, H6 ``_check_floor``) and checkpoints load with torch.load(weights_only=True)
(Coordinator._restore, Holder._load_state).
"""

import pytest

from securefed.audit import MITIGATED
from securefed.audit import deployment_attacks as da
from securefed.federation.holder import _check_floor
from securefed.secagg import SecAggConfig


def test_real_holders_refuse_a_weaker_secagg_config_than_their_own():
    ev = da.holder_takes_config_from_welcome()
    assert ev["holders_that_took_the_welcome"] == 4          # H1 lets it through: ring and threshold fit ...
    assert ev["round_start_answered"] == 0 and ev["masked_inputs_sent"] == 0 and ev["round_aborted"]   # ... H6 does not
    assert ev["floor_refuses_degree_2_for_10_holders"]


def test_welcome_downgrade_is_mitigated():
    f = da.welcome_downgrade()
    # the attack still works *if* a holder accepted the weak graph (that is what the floor prevents)
    assert f.evidence["threshold_t_after_downgrade"] == 2 and f.evidence["threshold_t_holder_default"] == 6
    assert f.evidence["target_input_recovered_exactly"] is True
    assert f.evidence["holder_config_from_welcome"] is False
    assert f.verdict == MITIGATED


@pytest.mark.parametrize("announced, floor, n", [
    (SecAggConfig(neighbours=2), SecAggConfig(), 10),                                # sparser graph: t 6 -> 2
    (SecAggConfig(), SecAggConfig(threshold_fraction=0.75), 8),                      # lower threshold fraction
    (SecAggConfig(neighbours=0), SecAggConfig(), 100),                              # auto graph, floor complete
    (SecAggConfig(), SecAggConfig(), 2),                                             # a "sum" of two reveals each
])
def test_holder_floor_refuses_each_weakening(announced, floor, n):
    with pytest.raises(ValueError):
        _check_floor(announced, floor, n, min_cohort=3)


def test_holder_floor_accepts_its_own_settings_and_auto_graph_when_allowed():
    _check_floor(SecAggConfig(), SecAggConfig(), 4, min_cohort=3)
    _check_floor(SecAggConfig(neighbours=0), SecAggConfig(neighbours=0), 100, min_cohort=3)
    with pytest.raises(ValueError):
        _check_floor(SecAggConfig(), SecAggConfig(), 4, min_cohort=5)                # the holder's own minimum


def test_resume_does_not_unpickle_arbitrary_objects():
    f = da.checkpoint_code_execution()
    assert f.evidence["refused_with"] == {"coordinator --resume": "UnpicklingError", "holder restart": "UnpicklingError"}
    assert not any(f.evidence["payload_executed"].values())
    assert not f.evidence["unsafe_load_sites"]
    assert f.verdict == MITIGATED
