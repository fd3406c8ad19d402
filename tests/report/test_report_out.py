"""`securefed report RUN_DIR --out DIR` replaces DIR as a whole, so it refuses (exit 2, one line, nothing written or
removed) any DIR whose replacement would lose a file: the run directory, a folder around it, a folder inside one of
the run's own entries, a file, a non-empty folder that is not an earlier report. An earlier report is replaced."""

import pytest

from securefed.cli import main
from tests.report.signed_run import make_signed_run


def _tree(root):
    """Every path under ``root`` with its bytes (None for a folder): what a refused command must leave as it was."""
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


@pytest.fixture
def world(tmp_path):
    rd = tmp_path / "runs" / "dp"
    make_signed_run(rd)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("a user's own file")
    (tmp_path / "notes.txt").write_text("a user's own file")
    return tmp_path, rd


@pytest.mark.parametrize("where,said", [
    ("run", "is the run directory itself"),
    ("run/.", "is the run directory itself"),
    ("parent", "contains the run directory"),
    ("grandparent", "contains the run directory"),
    ("mine", "is not an earlier report"),
    ("file", "is a file, not a folder"),
    ("run/privacy", "is not an earlier report"),
    ("run/config.yaml", "is a file, not a folder"),
    ("run/privacy/report", "inside the run's own privacy/"),
])
def test_out_that_would_lose_files_is_refused(world, where, said, capsys):
    root, rd = world
    out = {"run": rd, "run/.": rd / ".", "parent": rd.parent, "grandparent": root, "mine": root / "mine",
           "file": root / "notes.txt", "run/privacy": rd / "privacy", "run/config.yaml": rd / "config.yaml",
           "run/privacy/report": rd / "privacy" / "report"}[where]
    assert (rd / "config.yaml").is_file()
    before = _tree(root)
    assert main(["report", str(rd), "--out", str(out)]) == 2
    err = capsys.readouterr()
    assert said in err.err and len(err.err.strip().splitlines()) == 1 and "report written" not in err.out
    assert _tree(root) == before   # every file still there, unchanged, and no temporary folder left behind


def test_earlier_report_new_or_empty_folder_is_written(world, capsys):
    root, rd = world
    out = root / "reports" / "dp"
    assert main(["report", str(rd), "--out", str(out)]) == 0
    first = _tree(out)
    assert {"report.json", "report.md", "report.html", "epsilon.png"} <= set(first)
    (out / "report.md").write_text("stale")                 # an earlier report: replaced as a whole
    (root / "reports" / ".dp.old").mkdir()                  # the name the old code cleared for its swap: a user's now
    (root / "reports" / ".dp.old" / "keep.txt").write_text("a user's file")
    assert main(["report", str(rd), "--out", str(out)]) == 0
    assert (out / "report.md").read_text() != "stale" and set(_tree(out)) == set(first)
    assert (root / "reports" / ".dp.old" / "keep.txt").read_text() == "a user's file"
    assert sorted(p.name for p in out.parent.iterdir()) == [".dp.old", "dp"]   # no temporary folder left
    # the default folder, RUN_DIR/report, re-rendered twice
    assert main(["report", str(rd)]) == 0 and main(["report", str(rd)]) == 0
    assert (rd / "report" / "report.html").is_file()
    assert not [p.name for p in rd.iterdir() if p.name.startswith(".")]
    # an empty folder, and a new folder inside the run (nothing of the run's is lost)
    (root / "empty").mkdir()
    assert main(["report", str(rd), "--out", str(root / "empty")]) == 0
    assert main(["report", str(rd), "--out", str(rd / "report-2")]) == 0
    assert (root / "empty" / "report.html").is_file() and (rd / "report-2" / "report.html").is_file()


def test_earlier_report_with_a_users_file_is_refused(world, capsys):
    root, rd = world
    assert main(["report", str(rd)]) == 0
    (rd / "report" / "my-notes.md").write_text("a user's own file")
    before = _tree(root)
    assert main(["report", str(rd)]) == 2
    assert "is not an earlier report" in capsys.readouterr().err and _tree(root) == before


def test_a_simulation_whose_report_folder_holds_a_users_file_keeps_it_and_says_so(tmp_path, tiny_run, capsys,
                                                                                monkeypatch):
    """The run's own report step: a file a user put into RUN/report during the run is kept (the folder is not
    replaced), the run is whole (exit 0, summary written), and one line says how to write the report elsewhere."""
    from securefed.cli import main

    out = tmp_path / "run"
    import securefed.federation.coordinator as coord_mod

    real_finish = coord_mod.Coordinator.finish

    def finish_and_drop_a_file(self):
        summary = real_finish(self)
        (self.rd.root / "report").mkdir(exist_ok=True)
        (self.rd.root / "report" / "my-notes.txt").write_text("mine")
        return summary

    monkeypatch.setattr(coord_mod.Coordinator, "finish", finish_and_drop_a_file)
    rc = main(["simulate", "--quiet", "--out", str(out), *[a for t in [*tiny_run, "federation.rounds=1"]
                                                            for a in ("--set", t)]])
    printed, err = capsys.readouterr()
    assert rc == 0 and (out / "summary.json").is_file()
    assert (out / "report" / "my-notes.txt").read_text() == "mine"
    assert "the report was not written" in err and "--out NEW" in err and "Traceback" not in err, err
    # its last line names no report it did not write (it said "(report: RUN_DIR/report/report.html)" regardless)
    assert printed.strip().splitlines()[-1] == f"run directory: {out}  (no report written: see above)"


def test_a_report_that_cannot_be_written_is_one_line_and_keeps_the_earlier_one(world, monkeypatch, capsys):
    """A full disk while the report is rendered: `report` (exit 2) and the end of `simulate` / `server`
    (render_run_report) each say so in one line naming the file — both were OSError tracebacks."""
    import errno
    import os

    import securefed.report.render as render

    root, rd = world
    assert main(["report", str(rd)]) == 0
    before = _tree(rd / "report")

    def full(run, out):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(out / "epsilon.png"))
    monkeypatch.setattr(render, "_render", full)
    capsys.readouterr()
    assert main(["report", str(rd)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("securefed report: the report was not written: ") and "No space left on device" in err
    assert len(err.strip().splitlines()) == 1 and _tree(rd / "report") == before
    assert render.render_run_report(rd, command="simulate") is False
    err = capsys.readouterr().err
    assert err.startswith("securefed simulate: the report was not written: ") and "epsilon.png: No space left" in err
    assert len(err.strip().splitlines()) == 1 and _tree(rd / "report") == before
