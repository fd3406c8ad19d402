"""SEC-11 / SEC-12: deployment configuration attacks (securefed/audit/deployment_attacks.py).

Both were found VULNERABLE by the first audit run (2026-11-29) and fixed: holders now enforce their own
secure-aggregation floor (runtime/netclient.py: check_holder_policy) and checkpoints load with
torch.load(weights_only=True).
"""

import pytest

from securefed.audit import MITIGATED
from securefed.audit import deployment_attacks as da
from securefed.runtime.netclient import PolicyRefused, check_holder_policy
from securefed.secagg import SecAggConfig


def test_holder_refuses_a_weaker_secagg_config_than_its_own():
    assert not da.holder_takes_config_from_welcome()


def test_welcome_downgrade_is_mitigated():
    f = da.welcome_downgrade()
    # the attack still works *if* a holder accepted the weak graph (that is what the floor prevents)
    assert f.evidence["threshold_t_after_downgrade"] == 2 and f.evidence["threshold_t_holder_default"] == 6
    assert f.evidence["holder_config_from_welcome"] is False
    assert f.verdict == MITIGATED


@pytest.mark.parametrize("welcome, manifest", [
    ({"ring_bits": 16}, {"cohort": [1, 2, 3, 4], "max_clients": 4}),
    ({"threshold_fraction": 0.5, "neighbours": 2}, {"cohort": list(range(1, 11)), "max_clients": 10}),
    ({}, {"cohort": [1, 2, 3, 4], "max_clients": 8}),            # plan for more holders than the cohort
    ({}, {"cohort": [1, 2], "max_clients": 2}),                  # a "sum" of two reveals each to the other
])
def test_holder_policy_refuses_each_weakening(welcome, manifest):
    with pytest.raises(PolicyRefused):
        check_holder_policy(SecAggConfig(**welcome), manifest, floor=SecAggConfig())


def test_holder_policy_accepts_its_own_settings_and_auto_graph_when_allowed():
    check_holder_policy(SecAggConfig(), {"cohort": [1, 2, 3, 4], "max_clients": 4}, floor=SecAggConfig())
    big = {"cohort": list(range(1, 101)), "max_clients": 100}
    check_holder_policy(SecAggConfig(neighbours=0), big, floor=SecAggConfig(neighbours=0))
    with pytest.raises(PolicyRefused):
        check_holder_policy(SecAggConfig(neighbours=0), big, floor=SecAggConfig())


def test_resume_does_not_unpickle_arbitrary_objects():
    f = da.checkpoint_code_execution()
    assert not f.evidence["payload_executed_on_resume"]
    assert not f.evidence["unsafe_load_sites"]
    assert f.verdict == MITIGATED
