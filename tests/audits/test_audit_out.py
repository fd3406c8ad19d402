"""`securefed audit --out DIR` writes config.json and report.{json,md,html} into DIR, so it refuses (exit 2, before any
scenario runs, nothing written) a file or a non-empty folder that is not an earlier audit report."""

from pathlib import Path

import pytest

from securefed.cli import main

COMMITTED = Path(__file__).resolve().parents[2] / "audits" / "reports"


def _tree(root):
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("kind", ["folder", "file", "look-alike"])
def test_out_with_a_users_files_is_refused(tmp_path, kind, capsys):
    mine = tmp_path / "mine"
    if kind == "file":
        mine.write_text("a user's file")
    else:
        mine.mkdir()
        (mine / "report.md").write_text("a user's own report")   # a name the audit writes
        if kind == "look-alike":
            (mine / "config.json").write_text('{"lr": 0.1}')
    before = _tree(tmp_path)
    assert main(["audit", "--security-only", "--out", str(mine)]) == 2
    err = capsys.readouterr()
    assert "securefed audit: --out" in err.err and len(err.err.strip().splitlines()) == 1 and not err.out
    assert _tree(tmp_path) == before


def test_earlier_audit_report_or_empty_folder_is_accepted(tmp_path):
    from securefed.audit.suite import check_audit_out

    for d in sorted(COMMITTED.iterdir()):
        check_audit_out(d)   # the committed reports: re-running the audit into them rewrites them
    check_audit_out(tmp_path)
    check_audit_out(tmp_path / "new")
