"""System-level threats of threat_models/system.md that need a direct check (SYS-15, SYS-16)."""

from securefed.audit.harness import Round
from securefed.primitives.rng import SystemEntropy
from securefed.runtime.config import load_run_config
from securefed.runtime.parties import EntropyFactory

SECRETS = ("_c", "_s", "_b", "_held", "_x", "_rng")


def test_secrets_come_from_the_os_csprng_unless_deterministic_is_asked():
    assert load_run_config().deterministic_secrets is False          # the default run
    assert isinstance(EntropyFactory(seed=0, deterministic=False).for_party(0, 1, "secagg"), SystemEntropy)
    # why SYS-16 matters: with deterministic_secrets anyone holding config.yaml's seed re-derives the secrets
    a = EntropyFactory(seed=7, deterministic=True).for_party(3, 2, "secagg").random_bytes(32)
    b = EntropyFactory(seed=7, deterministic=True).for_party(3, 2, "secagg").random_bytes(32)
    c = EntropyFactory(seed=8, deterministic=True).for_party(3, 2, "secagg").random_bytes(32)
    assert a == b and a != c


def test_round_secrets_are_erased_when_the_round_ends():
    r = Round(n=5).steps(5)                                            # a complete round
    for c in r.clients.values():
        assert all(getattr(c, name, None) is None for name in SECRETS), c.id
    r = Round(n=5, client_ctx={1: b"another model"})                   # holder 1 aborts at RoundStart
    r.deliver()
    assert 1 in r.aborted and all(getattr(r.clients[1], n, None) is None for n in SECRETS)


def test_audit_exit_status_flags_changed_verdicts_and_strict_vulnerabilities(tmp_path, monkeypatch, capsys):
    import dataclasses

    from securefed.audit import suite
    from securefed.cli import main

    by_id = {s.id: s for s in suite.SCENARIOS}
    sybil, pickle_ck = by_id["SEC-03"], by_id["SEC-12"]                 # both fast, both MITIGATED
    monkeypatch.setattr(suite, "SCENARIOS", (sybil, pickle_ck))
    assert main(["audit", "--security-only", "--out", str(tmp_path / "a")]) == 0          # verdicts as expected
    assert main(["audit", "--security-only", "--strict", "--out", str(tmp_path / "b")]) == 0  # no VULNERABLE left
    known_bad = dataclasses.replace(pickle_ck, run=lambda: dataclasses.replace(pickle_ck.run(), verdict="VULNERABLE"),
                                    expected="VULNERABLE")
    monkeypatch.setattr(suite, "SCENARIOS", (known_bad,))
    assert main(["audit", "--security-only", "--strict", "--out", str(tmp_path / "d")]) == 1  # --strict flags it
    monkeypatch.setattr(suite, "SCENARIOS", (dataclasses.replace(sybil, expected="VULNERABLE"),))
    assert main(["audit", "--security-only", "--out", str(tmp_path / "c")]) == 1          # a verdict changed
    assert "verdicts differ from the expected ones: SEC-03" in capsys.readouterr().out
