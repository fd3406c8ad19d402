"""A run stopped after its summary.json and before its report (rundir.unreported).

A crash review sent SIGTERM, and kill -9, right after summary.json was written: the interrupt's hint said --resume,
--resume refused the run ("holds a finished run … nothing to resume"), and its report was never written. Now
--resume of such a run — `securefed simulate` and `securefed server` alike — writes the report and nothing else
(its model, signed end-of-run record, ledgers and checkpoint stand), exits as the run would have, and the hint says
so; a second --resume is refused as finished.
"""

from __future__ import annotations

import json
import shutil
import socket

import pytest

from securefed.cli import main
from securefed.runtime.rundir import RunDirError, check_out_dir, resume_hint


class _Killed(BaseException):
    """The process dies between summary.json and the report (BaseException: no handler on the way catches it)."""


OVERRIDES = ["data.max_sources=4", "data.max_bytes_per_source=30000", "data.vocab_size=512", "data.seq_len=32",
             "train.local_steps=2", "train.batch_size=4", "train.warmup_steps=1", "train.eval_batch_size=64",
             "federation.rounds=1", "federation.eval_every=1", "baseline=false", "deterministic_secrets=true"]


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, fed_cache):
    """One tiny run (1 round, 4 holders, no baseline) stopped right after its summary.json; each test copies it."""
    import securefed.report
    import securefed.report.render
    from securefed.federation.simulation import Simulation
    from securefed.runtime.config import load_run_config

    overrides = OVERRIDES + [f"data.cache_dir={fed_cache}"]
    run = tmp_path_factory.mktemp("stopped") / "run"

    def killed(*a, **k):
        raise _Killed
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(securefed.report.render, "render_report", killed)
        mp.setattr(securefed.report, "render_report", killed)
        with pytest.raises(_Killed):
            Simulation(load_run_config(overrides=overrides), run, progress=False, threads_per_holder=1).run()
    assert (run / "summary.json").is_file() and not (run / "report").exists()
    return run, overrides


def _copy(stopped, tmp_path):
    run, overrides = stopped
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run", [a for o in overrides for a in ("--set", o)]


def _untouched(run) -> dict:
    """What a resume that only writes the report must leave as it was."""
    names = ["privacy/ledger.jsonl", "privacy/end.json", "model/model.safetensors", "checkpoints/latest.pt",
             "metrics.jsonl", *sorted(str(p.relative_to(run)) for p in (run / "holders").glob("*/ledger.jsonl"))]
    return {n: (run / n).read_bytes() for n in names}


def test_the_hint_and_the_checks_agree_that_resume_writes_the_report(stopped, tmp_path):
    run, _ = _copy(stopped, tmp_path)
    hint = resume_hint(run, "with the same arguments and --resume")
    assert hint == (f"the run in {run} finished its rounds: its report is written with the same arguments and --resume "
                    f"(or by `securefed report {run}`)")
    check_out_dir(run, resume=True)                                    # --resume is let through (it was refused)
    with pytest.raises(RunDirError, match="finished its rounds but has no report.*--resume to write its report"):
        check_out_dir(run, resume=False)


def test_simulate_resume_writes_the_report_and_nothing_else(stopped, tmp_path, capsys):
    """Also SYS-34: the private keys went once summary.json was final, before the report the stop cut short; the
    report-only --resume needs none (and says nothing of keys: none left to remove), verify passes without them."""
    from securefed.transport.pki import Layout

    run, sets = _copy(stopped, tmp_path)
    keys = Layout(run / "pki").private_files()
    assert len(keys) == 3 + 2 * 4 and not any(p.exists() for p in keys) and (run / "pki" / "roster.yaml").is_file()
    before, summary = _untouched(run), json.loads((run / "summary.json").read_text())
    assert main(["simulate", "--out", str(run), "--resume", "--quiet", *sets]) == 0
    out, err = capsys.readouterr()
    assert "finished its rounds before it stopped: writing its report" in err and "Traceback" not in err
    assert "private key" not in err
    assert (run / "report" / "report.json").is_file() and _untouched(run) == before
    after = json.loads((run / "summary.json").read_text())
    assert after["phase_seconds"].keys() == summary["phase_seconds"].keys() | {"report"}
    assert {k: v for k, v in after.items() if k not in ("phase_seconds", "wall_seconds")} == \
           {k: v for k, v in summary.items() if k not in ("phase_seconds", "wall_seconds")}
    assert json.loads(out[:out.rindex("}") + 1])["run_id"] == summary["run_id"]
    assert main(["verify", str(run)]) == 0
    assert "private signing key" not in capsys.readouterr().out
    assert resume_hint(run, "with --resume").startswith(f"the run in {run} is complete")
    assert main(["simulate", "--out", str(run), "--resume", "--quiet", *sets]) == 2   # now it is finished
    err = capsys.readouterr().err
    assert "holds a finished run" in err and "Traceback" not in err


def test_a_report_only_resume_removes_the_private_keys_it_finds(stopped, tmp_path, capsys):
    """SYS-34 on the report-only path: a run stopped after summary.json that still holds private keys in pki/ (as a run
    of an earlier version did) has them removed by the --resume that completes it, in one line."""
    from securefed.transport.pki import Layout

    run, sets = _copy(stopped, tmp_path)
    lay = Layout(run / "pki")
    for p in (lay.server_identity, lay.holder_identity(2), lay.holder_key(3)):
        p.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    assert main(["simulate", "--out", str(run), "--resume", "--quiet", *sets]) == 0
    err = capsys.readouterr().err
    assert f"removed the 3 private keys this run generated in {lay.root}" in err and "Traceback" not in err
    assert not any(p.exists() for p in lay.private_files()) and (run / "report" / "report.json").is_file()
    assert main(["verify", str(run)]) == 0
    assert "private signing key" not in capsys.readouterr().out


def test_server_resume_writes_the_report_and_marks_its_status_ended(stopped, tmp_path, capsys):
    run, sets = _copy(stopped, tmp_path)
    before = _untouched(run)
    # as a coordinator killed after summary.json leaves it: live-looking, its pid gone (above Linux's largest pid)
    (run / "status.json").write_text(json.dumps({"port": 1, "pid": 2 ** 22 + 1, "host": socket.gethostname(),
                                                 "board": {"round": 1, "stage": -1, "ended": None}, "updated": 0}))
    assert main(["server", "--status", str(run)]) == 1
    assert "restart it with the same arguments and --resume" in capsys.readouterr().err
    assert main(["server", "--pki", str(run / "pki"), "--out", str(run), "--resume", "--port", "0", *sets]) == 0
    out, err = capsys.readouterr()
    assert "Traceback" not in err and (run / "report" / "report.json").is_file() and _untouched(run) == before
    assert json.loads(out.strip().splitlines()[-1])["rounds"] == 1
    assert f"securefed server: run directory: {run}  (report: {run / 'report' / 'report.html'})" in err
    assert main(["server", "--status", str(run)]) == 0
    assert "run ended after round 1 (finished)" in capsys.readouterr().err
    assert main(["server", "--pki", str(run / "pki"), "--out", str(run), "--resume", "--port", "0", *sets]) == 2
    assert "holds a finished run" in capsys.readouterr().err
