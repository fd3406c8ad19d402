"""What a holder keeps is its own (threat_models/system.md SYS-30): its state directory is 0700 even when an operator
made it beforehand with wider permissions, and every ledger file (holder and server) is created 0600 — the entries
list who took part in each round, which amplification by sampling assumes secret (protocols/dp.md §11). Found by
the secrets review: ledgers were 0644, and a state directory made 0755 beforehand stayed 0755."""

from __future__ import annotations

import stat


def test_a_holders_state_directory_and_every_ledger_are_readable_by_their_owner_only(tmp_path, fed_cache, caplog):
    from securefed.audit.federation_harness import tiny_federation

    pre = tmp_path / "state-1"
    pre.mkdir()
    pre.chmod(0o755)                       # an operator's mkdir under a umask of 022, named as holder 1's state_dir
    fed = tiny_federation(tmp_path / "run", cache_dir=fed_cache, holder_fields={1: {"state_dir": str(pre)}})
    assert "aborted" not in fed.coordinator.run_round(1)
    assert stat.S_IMODE(pre.stat().st_mode) == 0o700
    assert "was readable by others; made 0700" in caplog.text
    ledgers = list(tmp_path.rglob("*.jsonl"))
    ledgers = [p for p in ledgers if "ledger" in p.name or p.parent.name in ("holders", "privacy")]
    assert ledgers and len([p for p in ledgers if p.name == "ledger.jsonl"]) >= 5   # 4 holders and the server
    for p in ledgers:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, p


def test_a_state_directory_that_cannot_be_made_private_is_refused(tmp_path, fed_cache, monkeypatch):
    """Fail closed (SYS-30): a wider state directory this account cannot chmod (another owner's, a mount that
    ignores modes) is refused with one error naming it, before the holder writes anything there."""
    from pathlib import Path

    import pytest

    from securefed.audit.federation_harness import tiny_federation
    from securefed.federation.holder import HolderStateError

    pre = tmp_path / "state-1"
    pre.mkdir()
    pre.chmod(0o755)
    real = Path.chmod

    def refuse(self, mode, *a, **k):
        if self == pre:
            raise PermissionError(1, "Operation not permitted")
        return real(self, mode, *a, **k)

    monkeypatch.setattr(Path, "chmod", refuse)
    with pytest.raises(HolderStateError, match=f"state directory {pre} is readable by others and could not be made 0700"):
        tiny_federation(tmp_path / "run", cache_dir=fed_cache, holder_fields={1: {"state_dir": str(pre)}})
    assert list(pre.iterdir()) == []
