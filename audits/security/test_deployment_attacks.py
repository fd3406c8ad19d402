"""SEC-11: the coordinator chooses the holders' secure-aggregation parameters (securefed/audit/deployment_attacks.py)."""

import pytest

from securefed.audit import VULNERABLE
from securefed.audit import deployment_attacks as da


def test_welcome_downgrade_finding_is_documented():
    """The finding as it stands: coordinator + 2 holders recover a holder's input exactly."""
    f = da.welcome_downgrade()
    ev = f.evidence
    if not ev["holder_config_from_welcome"]:
        pytest.skip("netclient no longer takes SecAggConfig from the welcome: see the xfail test below")
    assert ev["threshold_t_after_downgrade"] == 2 and ev["threshold_t_holder_default"] == 6
    assert ev["target_input_recovered_exactly"]
    assert f.verdict == VULNERABLE and f.fix


@pytest.mark.xfail(strict=True, reason="VULNERABLE (SEC-11): `securefed client` builds SecAggConfig from the "
                   "coordinator's welcome with no holder-side floor; fix in runtime/netclient.py (see audit report)")
def test_holder_refuses_a_weaker_secagg_config_than_its_own():
    assert not da.holder_takes_config_from_welcome()


def test_checkpoint_payload_finding_is_documented():
    f = da.checkpoint_code_execution()
    assert f.evidence["weights_only_true_refuses_payload"]  # the proposed fix stops it
    if not f.evidence["payload_executed_on_resume"]:
        pytest.skip("resume no longer unpickles: see the xfail test below")
    assert f.verdict == VULNERABLE and any("simulate.py" in s for s in f.evidence["unsafe_load_sites"])


@pytest.mark.xfail(strict=True, reason="VULNERABLE (SEC-12): runtime/simulate.py and runtime/netserver.py load "
                   "checkpoints with torch.load(weights_only=False); fix: weights_only=True")
def test_resume_does_not_unpickle_arbitrary_objects():
    assert not da.checkpoint_code_execution().evidence["payload_executed_on_resume"]
