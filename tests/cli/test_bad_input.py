"""Bad input through the CLI: each case gets one clear message and a non-zero exit, and leaves nothing
(half-)written. `simulate` refuses these before importing torch (timing: benchmarks/firsthour/)."""

import json
import shutil
import os
import subprocess
import time
import sys

import pytest
import yaml

from securefed.cli import main
from securefed.configio import to_dict
from securefed.runtime.config import load_run_config


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a default --out (runs/...) would land here: it must not appear


def _files(d):
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def _fake_run(d, preset="demo", *, checkpoint=False, overrides=()):
    """A run directory as `securefed simulate` leaves it (config, metrics; optionally a checkpoint)."""
    d.mkdir(parents=True)
    cfg = load_run_config(preset=preset, overrides=list(overrides))
    (d / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False) + '# versions: {"securefed": "0.1.0"}\n')
    (d / "metrics.jsonl").write_text('{"round": 1, "train_loss": 5.0}\n')
    if checkpoint:
        (d / "checkpoints").mkdir()
        (d / "checkpoints" / "latest.pt").write_bytes(b"not read by the checks")
    return d


def _finished(run, summary: str) -> None:
    """The run's summary.json and the report written after it: a finished run (a summary without its report is a
    run stopped before its report, whose --resume writes it: tests/runtime/test_resume_after_summary.py)."""
    (run / "summary.json").write_text(summary)
    (run / "report").mkdir(exist_ok=True)
    (run / "report" / "report.json").write_text("{}\n")


# ------------------------------------------------------------------------------------------- simulate
@pytest.mark.parametrize("argv, message", [
    (["--set", "train.local_steps=0"], "configuration error: train: train.local_steps (K) must be >= 1, got 0"),
    (["--set", "federation.bogus=1"], "configuration error: federation: unknown key(s) ['bogus']; valid keys are"),
    (["--preset", "nope"], "configuration error: unknown run preset 'nope'"),
    (["--config", "missing.yaml"], "configuration error: config file missing.yaml does not exist"),
    (["--set", "model.preset=13b"], "unknown model preset '13b'"),
    (["--set", "model.init_from=nowhere"], "model.init_from: nowhere has no model.safetensors (a directory written "
     "by save_pretrained, such as a run's RUN_DIR/model)"),
    (["--set", "rounds"], "must look like section.key=value"),
    # a secure round needs 3 accepters: with 2 holders every round aborted and the run ended "done", exit 0
    (["--set", "federation.n_holders=2"], "aggregation.mode=secagg needs at least 3 holders in a round, and "
     "federation.n_holders is 2: every round would abort"),
    (["--set", "federation.n_holders=8", "--set", "federation.clients_per_round=2"],
     "and federation.clients_per_round is 2: every round would abort"),
    (["--preset", "gpu-20m", "--set", "outer.name=fedavg"],   # the preset's Nesterov warmup does not carry over
     "outer.momentum_warmup=56 ramps the outer momentum, and fedavg has none: use outer.name=nesterov or fedmom, "
     "or --set outer.momentum_warmup=0"),
])
def test_bad_config(argv, message, tmp_path, capsys):
    assert main(["simulate", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("securefed simulate: ") and message in err and err.count("\n") == 1
    assert _files(tmp_path) == []  # no run directory, nothing else


def test_a_model_the_host_cannot_hold_is_refused_before_anything_is_built(tmp_path, capsys, monkeypatch):
    """--set model.preset=7b on a small machine: one clear error in well under a second, not an OOM kill."""
    monkeypatch.setattr("securefed.training.memory.available_host_bytes", lambda: 8 * 2**30)
    assert main(["simulate", "--set", "model.preset=7b"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("securefed simulate: model.preset=7b with 4 holders needs at least ")
    assert "8.0 GiB are available" in err and err.count("\n") == 1
    assert _files(tmp_path) == []
    assert main(["simulate", "--set", "model.preset=7b", "--print-config"]) == 0   # looking is always allowed


def test_tensorboard_without_its_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    assert main(["simulate", "--set", "logging.tensorboard=true"]) == 2
    assert "logging.tensorboard=true needs the tensorboard package" in capsys.readouterr().err
    assert _files(tmp_path) == []


def test_reused_out_holding_another_run(tmp_path, capsys):
    run = _fake_run(tmp_path / "runs" / "a", preset="dp", checkpoint=True)
    before = _files(run)
    assert main(["simulate", "--out", str(run)]) == 2
    err = capsys.readouterr().err
    assert f"securefed simulate: {run} holds another run (preset dp); choose a new --out, or --resume to continue it" in err
    assert "ledger entry" not in err and _files(run) == before


def test_reused_out_holding_a_run_without_a_checkpoint_does_not_suggest_resume(tmp_path, capsys):
    """A newcomer's walkthrough (stop 52): Ctrl-C before the first checkpoint said "start again with a new --out (or
    remove the directory)"; the same command again said "holds another run … or --resume to continue it", and
    --resume said "has no checkpoint … nothing to resume". The second answer now says why --resume cannot help."""
    run = _fake_run(tmp_path / "runs" / "a", preset="dp")
    before = _files(run)
    assert main(["simulate", "--out", str(run), "--preset", "dp"]) == 2
    err = capsys.readouterr().err
    assert (f"{run} holds another run (preset dp) that stopped before its first checkpoint, so there is nothing to "
            f"resume; choose a new --out, or remove {run} to start again there") in err and "--resume" not in err, err
    assert _files(run) == before
    # still running before its first checkpoint (another process holds its lock): never "remove it"
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], "
                               "os.O_RDWR | os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'4242'); "
                               "print('held', flush=True); time.sleep(60)", str(run / ".lock")],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["simulate", "--out", str(run), "--preset", "dp"]) == 2
        err = capsys.readouterr().err
        assert f"{run} holds a run in progress (preset dp; process 4242); let it finish or stop it" in err, err
        assert "remove" not in err
    finally:
        holder.kill()
        holder.wait()


def test_a_finished_run_is_named_finished_whatever_the_settings_given(tmp_path, capsys):
    """A newcomer's walkthrough (stop 52): `--resume` of a finished run made with `--set baseline=false`, given without
    it, said "made with other settings; resume it with that run's settings" — which then said "holds a finished run".
    A run whose report is written over its summary.json is finished under any settings."""
    run = _fake_run(tmp_path / "runs" / "done", checkpoint=True, overrides=("baseline=false",))
    _finished(run, '{"rounds": 1}\n')
    before = _files(run)
    for extra in (["--resume"], []):
        assert main(["simulate", "--out", str(run), *extra]) == 2
        err = capsys.readouterr().err
        assert "holds a finished run" in err and "other settings" not in err and "or --resume" not in err, err
    assert _files(run) == before


def test_reused_out_holding_a_finished_run_does_not_suggest_resume(tmp_path, capsys):
    """A newcomer's walkthrough (stop 49): `simulate --out` on a finished run said "choose a new --out or --resume",
    and --resume then refused it as finished. A finished run is now named as such, and --resume is not offered."""
    run = _fake_run(tmp_path / "runs" / "done", checkpoint=True)
    _finished(run, '{"rounds": 1}\n')
    before = _files(run)
    assert main(["simulate", "--out", str(run), "--set", "baseline=false"]) == 2
    err = capsys.readouterr().err
    assert f"{run} holds a finished run (preset demo" in err and "choose a new --out" in err and "--resume" not in err, err
    assert main(["simulate", "--out", str(run), "--set", "baseline=false", "--resume"]) == 2
    assert "holds a finished run" in capsys.readouterr().err
    assert _files(run) == before


def test_reused_out_names_the_changes_to_its_preset(tmp_path, capsys):
    run = _fake_run(tmp_path / "b", overrides=("federation.rounds=3",))
    assert main(["simulate", "--out", str(run)]) == 2
    assert "holds another run (preset demo with changes to federation.rounds)" in capsys.readouterr().err


def test_resume_under_other_settings_is_refused(tmp_path, capsys):
    run = _fake_run(tmp_path / "c", checkpoint=True)
    assert main(["simulate", "--out", str(run), "--resume", "--preset", "dp"]) == 2
    err = capsys.readouterr().err
    assert f"--resume: {run} holds a run (preset demo) made with other settings; resume it with that run's settings" in err
    assert "privacy.mode: 'none' there, 'distributed' now" in err


def test_resume_of_a_finished_run_is_refused_and_one_stopped_in_its_baseline_is_not(tmp_path, capsys):
    """A newcomer's audit (stop 35): --resume of a finished run redid its export, report and baseline and overwrote
    summary.json's wall time (6.3 s became 0.5). A finished run (summary.json, with the baseline's result when the
    run has a baseline) is now refused, naming it, and nothing is touched; a run killed during its baseline (the
    coordinator's summary.json without central_eval_ppl) still resumes past this check."""
    run = _fake_run(tmp_path / "done", checkpoint=True)
    _finished(run, json.dumps({"fed_eval_ppl": 300.0, "central_eval_ppl": 250.0, "wall_seconds": 6.3}))
    before = _files(run)
    assert main(["simulate", "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"--resume: {run} holds a finished run (preset demo): nothing to resume" in err
    assert f"securefed report {run}" in err and _files(run) == before
    assert json.loads((run / "summary.json").read_text())["wall_seconds"] == 6.3
    # stopped in the baseline (the coordinator's summary.json, no report yet): the check passes (the resume then fails
    # on this fake checkpoint, past the check)
    (run / "summary.json").write_text(json.dumps({"fed_eval_ppl": 300.0, "wall_seconds": 6.3}))
    from securefed.runtime.rundir import RunDirError, check_out_dir

    with pytest.raises(RunDirError, match="holds a finished run"):     # a server run has no baseline: finished
        check_out_dir(run, resume=True, resolved=to_dict(load_run_config()), runs_baseline=False)
    # its report written, it is finished whatever this command runs (stop 52: a baseline it never ran is not redone)
    with pytest.raises(RunDirError, match="holds a finished run"):
        check_out_dir(run, resume=True, resolved=to_dict(load_run_config()), runs_baseline=True)
    shutil.rmtree(run / "report")
    check_out_dir(run, resume=True, resolved=to_dict(load_run_config()), runs_baseline=True)


def test_resume_of_a_run_that_ended_before_any_round_is_refused_though_it_has_no_baseline(tmp_path, capsys):
    """Review: simulate runs its baseline only when metrics.jsonl has rows (Simulation._finish), so a run that ended
    before its first round (too few holders, the budget) is finished without central_eval_ppl — and --resume of it
    passed the check (the server, with no baseline, refuses the same directory)."""
    run = _fake_run(tmp_path / "done", checkpoint=True)
    (run / "metrics.jsonl").write_text("")
    _finished(run, json.dumps({"fed_eval_ppl": None, "rounds": 0, "wall_seconds": 1.0}))
    before = _files(run)
    assert main(["simulate", "--out", str(run), "--resume"]) == 2
    assert f"--resume: {run} holds a finished run" in capsys.readouterr().err and _files(run) == before


@pytest.mark.parametrize("make, message", [
    (lambda d: None, "does not exist, so there is nothing to resume"),
    (lambda d: d.mkdir(), "is not a securefed run and has no checkpoint"),
    (lambda d: _fake_run(d), "holds a run (preset demo) but has no checkpoint"),
])
def test_resume_without_checkpoint(make, message, tmp_path, capsys):
    d = tmp_path / "r"
    make(d)
    before = _files(tmp_path)
    assert main(["simulate", "--out", str(d), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("securefed simulate: --resume: ") and message in err
    assert _files(tmp_path) == before


def test_out_that_is_a_file_or_a_foreign_directory(tmp_path, capsys):
    (tmp_path / "f").write_text("x")
    assert main(["simulate", "--out", str(tmp_path / "f")]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff")
    assert main(["simulate", "--out", str(tmp_path / "photos")]) == 2
    assert "exists and is not empty (and holds no securefed run)" in capsys.readouterr().err
    assert _files(tmp_path / "photos") == ["cat.jpg"]


def test_refusals_happen_before_torch_is_imported(tmp_path):
    run = _fake_run(tmp_path / "d", preset="dp")
    probe = ("import sys; from securefed.cli import main; "
             f"codes = [main(['simulate', '--set', 'train.lr=-1']), main(['simulate', '--out', {str(run)!r}]), "
             f"main(['simulate', '--out', {str(tmp_path / 'none')!r}, '--resume'])]; "
             "print(codes, sorted(m for m in ('torch', 'transformers', 'lightning', 'tenseal') if m in sys.modules))")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=120)
    assert out.stdout.strip() == "[2, 2, 2] []", out.stderr
    assert out.stderr.count("securefed simulate: ") == 3


# --------------------------------------------------------------------------------------------- report
def test_report_on_an_empty_directory(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "is not a securefed run directory" in err and err.count("\n") == 1
    assert _files(tmp_path / "empty") == []


@pytest.mark.parametrize("name, content, message", [
    ("summary.json", '{"fed_eval_ppl": 139.2, "rou', "summary.json is not valid JSON (Unterminated string"),
    ("summary.json", "", "summary.json is empty"),
    ("summary.json", "[1, 2]", "summary.json does not hold a JSON object"),
    ("metrics.jsonl", '{"round": 1, "train_loss": 5.0}\n{"round": 2, "tra\n{"round": 3}\n', "metrics.jsonl, line 2: not valid JSON"),
    ("metrics.jsonl", '{"round": 1}\n[3]\n', "metrics.jsonl, line 2: expected a JSON object, got list"),
    ("baseline/metrics.jsonl", '{"step": 1, "eval_ppl": 5\n', "baseline/metrics.jsonl, line 1: not valid JSON"),
    ("config.yaml", "seed: [1, 2\n", "config.yaml is not valid YAML"),
])
def test_report_names_a_corrupt_input_and_writes_nothing(name, content, message, tmp_path, capsys):
    run = _fake_run(tmp_path / "run")
    (run / name).parent.mkdir(exist_ok=True)
    (run / name).write_text(content)
    assert main(["report", str(run)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("securefed report: ") and message in err and err.count("\n") == 1
    assert not (run / "report").exists() and not any(p.name.startswith(".report") for p in run.iterdir())


def test_report_failure_keeps_an_earlier_report(tmp_path, capsys):
    run = _fake_run(tmp_path / "run")
    assert main(["report", str(run)]) == 1  # no ledger: written and flagged
    before = (run / "report" / "report.md").read_text()
    (run / "summary.json").write_text("{")
    assert main(["report", str(run)]) == 2
    assert (run / "report" / "report.md").read_text() == before


def test_corrupt_metrics_on_resume_is_named(tmp_path):
    from securefed.runtime.metrics_log import MetricsLog

    run = _fake_run(tmp_path / "run")
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"round": 2, "train_loss": Infinity}\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not valid JSON \(Infinity is not JSON"):
        MetricsLog.open(run, resume_round=3)
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[0]) == {"round": 1, "train_loss": 5.0}


def test_a_record_level_delta_above_one_over_the_largest_holders_records_is_refused_before_the_run(tmp_path, capsys):
    """The report audit (stop 34): δ ≤ 1/records was checked at the smallest holder (378 records), so δ = 0.0025
    passed and the largest (418) failed mid-run with a traceback and a half-written run directory."""
    from securefed.federation.data import coordinator_data

    tiny = ["data.max_sources=4", "data.max_bytes_per_source=30000", "data.vocab_size=512", "data.seq_len=32",
            "train.batch_size=4", "federation.rounds=1", "baseline=false"]
    cfg = load_run_config(preset="dp-sgd", overrides=tiny)
    sizes = [h["sequences"] for h in coordinator_data(cfg, progress=False).manifest["holders"]]
    assert min(sizes) < max(sizes)
    delta = 2 / (min(sizes) + max(sizes))             # between 1/largest and 1/smallest
    argv = ["simulate", "--preset", "dp-sgd", "--out", str(tmp_path / "r")] + [a for t in tiny for a in ("--set", t)]
    code = main(argv + ["--set", f"train.dp_sgd.delta={delta}"])
    err = capsys.readouterr().err
    assert code == 2 and f"exceeds 1/records = 1/{max(sizes)} of the largest holder" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------- config files: every command that reads one
@pytest.mark.parametrize("content, message", [
    ("federation: {rounds: [\n", "is not valid YAML (line 2, column 1: expected the node content"),
    (b"\x7fELF\x02\x01\x01\xd0\xff", "is not UTF-8 text; name a YAML file"),
    (None, "is a directory; name a YAML file"),
])
@pytest.mark.parametrize("command", ["simulate", "server", "client"])
def test_an_unreadable_config_file_is_one_error_naming_it(command, content, message, tmp_path, capsys):
    """A YAML slip in --config was a parser traceback and exit 1 (simulate, server and client share the loader);
    a directory passed as --config was said not to exist."""
    path = tmp_path / "cfg.yaml"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    before = _files(tmp_path)
    extra = {"server": ["--pki", str(tmp_path / "pki"), "--out", str(tmp_path / "run")]}.get(command, [])
    assert main([command, "--config", str(path), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"securefed {command}: ") and f"config file {path} {message}" in err
    assert "Traceback" not in err and err.count("\n") == 1
    assert _files(tmp_path) == before


def test_an_override_whose_value_is_not_yaml_is_one_error(tmp_path, capsys):
    assert main(["simulate", "--set", "federation.rounds=[1"]) == 2
    err = capsys.readouterr().err
    assert "configuration error: override 'federation.rounds=[1': the value is not valid YAML (line 1, column 3" in err
    assert err.count("\n") == 1 and _files(tmp_path) == []


def test_ctrl_c_says_how_to_resume_instead_of_a_traceback(tmp_path):
    """Ctrl-C during `securefed simulate` printed a 40-line KeyboardInterrupt traceback from wherever it landed (torch's
    RMSNorm) and nothing about the checkpoint the run can resume from (server and client alike)."""
    import signal

    tiny = ["data.max_sources=4", "data.max_bytes_per_source=30000", "data.vocab_size=512", "data.seq_len=32",
            "train.local_steps=2", "train.batch_size=4", "federation.rounds=200", "baseline=false"]
    out = tmp_path / "r"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    argv = [sys.executable, "-m", "securefed.cli", "simulate", "--out", str(out), *[a for t in tiny for a in ("--set", t)]]
    # SIGINT at its default in the child: a test run started in the background by a non-interactive shell (as CI may
    # start it) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    lines = []
    try:
        for line in proc.stderr:             # interrupt once the rounds run (a checkpoint exists)
            lines.append(line)
            if line.startswith("round 2/200"):
                proc.send_signal(signal.SIGINT)
                break
        lines += proc.stderr.readlines()
        assert proc.wait(timeout=120) == 130, "".join(lines)
    finally:
        proc.kill()
    err = "".join(lines)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert lines[-1] == (f"securefed simulate: interrupted (Ctrl-C); the run in {out} continues from its last checkpoint "
                         f"with the same arguments and --out {out} --resume\n")
    assert (out / "checkpoints" / "latest.pt").is_file()


def test_ctrl_c_before_the_first_checkpoint_does_not_send_the_user_to_resume(tmp_path, capsys, monkeypatch):
    """Review: the Ctrl-C line said 'continues from its last checkpoint ... --resume' however early it came; interrupted
    before the first checkpoint (data, the untrained model's evaluation), --resume is refused ('has no checkpoint')."""
    from securefed.federation import simulation

    def interrupted(self, *a, **kw):
        (tmp_path / "r").mkdir()
        (tmp_path / "r" / "config.yaml").write_text("seed: 0\n")
        raise KeyboardInterrupt
    monkeypatch.setattr(simulation.Simulation, "__init__", interrupted)
    out = tmp_path / "r"
    assert main(["simulate", "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert "securefed simulate: interrupted (Ctrl-C)" in err and "--resume" not in err, err
    assert f"no checkpoint was written yet: start again with a new --out (or remove {out})" in err, err


def test_a_path_of_the_wrong_kind_is_named_as_such_not_as_missing(tmp_path, capsys):
    """`securefed report FILE` said 'run directory FILE does not exist'; `verify --holder-ledger STATE_DIR` (the
    folder the README names, not the ledger.jsonl in it) and `--roster PKI_DIR` said the folder does not exist."""
    (tmp_path / "notes.txt").write_text("x")
    assert main(["report", str(tmp_path / "notes.txt")]) == 2
    assert capsys.readouterr().err == (f"securefed report: {tmp_path / 'notes.txt'} is a file, not a run directory: "
                                       "give the --out folder of a run\n")
    run = _fake_run(tmp_path / "run")
    (tmp_path / "state").mkdir()
    assert main(["verify", str(run), "--holder-ledger", str(tmp_path / "state")]) == 2
    assert capsys.readouterr().err == (f"securefed verify: --holder-ledger {tmp_path / 'state'} is a directory; give "
                                       "the file (ledger.jsonl in the holder's state_dir)\n")
    assert main(["verify", str(run), "--roster", str(tmp_path / "state")]) == 2
    assert "--roster" in capsys.readouterr().err
    assert main(["verify", str(run), "--roster", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml does not exist; give the file (roster.yaml" in capsys.readouterr().err


def test_a_holders_data_folder_of_jsonl_files_is_named_as_such_not_as_empty(tmp_path, capsys, monkeypatch, fed_cache):
    """A newcomer pointed a holder's data.holder_paths at the folder holding its notes.jsonl: `securefed client` said
    'data directory … is empty: no text files under it', of a folder with the data in it (a directory is read as
    text files; JSONL and Parquet only as a path of their own). It now names the files and what to give instead."""
    from securefed import cli

    monkeypatch.setattr(cli, "COMMANDS", tuple(dict.fromkeys((*cli.COMMANDS, "keygen", "client"))))
    assert main(["keygen", str(tmp_path / "pki"), "--holders", "1"]) == 0
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "notes.jsonl").write_text(json.dumps({"text": "Patient presented with a cough."}) + "\n")
    (tmp_path / "h.yaml").write_text(yaml.safe_dump({
        "holder_id": 1, "state_dir": str(tmp_path / "state"), "pki": str(tmp_path / "pki"), "max_failures": 0,
        "data": {"holder_paths": [str(tmp_path / "notes")], "vocab_size": 512, "seq_len": 32, "cache_dir": fed_cache}}))
    capsys.readouterr()
    assert main(["client", "--config", str(tmp_path / "h.yaml"), "--server", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "is empty" not in err and "Traceback" not in err
    assert (f"data directory {tmp_path / 'notes'} holds 1 JSONL/Parquet file(s) (notes.jsonl) and no text files" in err
            and "name a .jsonl or .parquet file itself as the data path" in err), err


@pytest.mark.parametrize("make, message", [
    (lambda d: (d / "notes" / "n9.txt").write_bytes("Befund: Übelkeit, Müller".encode("latin-1")),
     "notes/n9.txt: not UTF-8 text (byte 0xdc at offset 8; Latin-1 / Windows-1252?); convert it to UTF-8 (e.g. iconv"),
    (lambda d: (d / "notes" / "n9.txt").symlink_to(d.parent / "key.pem"),
     "notes/n9.txt is a symbolic link (to "),
    (lambda d: ((d / "循環器").mkdir(), (d / "循環器" / "a.txt").write_text("循環器 " * 50)),
     None),   # a folder named in another script is its own source, read
])
def test_a_holders_folder_is_read_exactly_or_refused_naming_the_file(make, message, tmp_path, capsys, tiny_run):
    """A reviewer's own data through `securefed simulate`: a Latin-1 note among UTF-8 ones was skipped quietly (the run
    trained on the rest, or said 'no held-out evaluation sequence'); a link to a file outside the folder was trained
    on (SYS-28). Now: one line naming the file and the fix, exit 2, nothing written."""
    data = tmp_path / "data"
    (data / "notes").mkdir(parents=True)
    for k in range(4):
        (data / "notes" / f"n{k}.txt").write_text(" ".join(f"word{k}{i % 37}" for i in range(400)))
    (tmp_path / "key.pem").write_text("-----BEGIN PRIVATE KEY-----\n")
    make(data)
    argv = ["simulate", "--quiet", "--out", str(tmp_path / "run"), "--set", f"data.source={data}", *sum(
        (["--set", s] for s in tiny_run), []), "--set", "federation.n_holders=3", "--set", "data.partition=iid"]
    if message is None:
        assert main([*argv, "--set", "federation.rounds=1"]) == 0
        man = json.loads((tmp_path / "run" / "data_manifest.json").read_text())
        assert sorted(man["sources"]) == ["notes", "循環器"]
        return
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"securefed simulate: {data}/") and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("address", ["localhost", "127.0.0.1:notaport", "nohostport", "host:0", "host:70000", ":50051",
                                     "::1:50051", "http://host:50051"])
def test_a_server_address_that_is_not_host_port_is_one_error_before_anything_is_sent(tmp_path, capsys, monkeypatch,
                                                                                       fed_cache, address):
    """A newcomer's walkthrough (stop 49): `securefed client --server localhost` was taken, and the holder retried a
    target gRPC could not use for about 20 minutes (20 failures of 60 s); `keygen --server nohostport` exited 0 and
    wrote it into every holder config. Both now refuse it at once (exit 2), naming the form."""
    from securefed import cli

    monkeypatch.setattr(cli, "COMMANDS", tuple(dict.fromkeys((*cli.COMMANDS, "keygen", "client"))))
    assert main(["keygen", str(tmp_path / "pki"), "--holders", "1"]) == 0
    assert main(["keygen", str(tmp_path / "pki2"), "--holders", "1", "--holder-configs", str(tmp_path / "hc"),
                 "--server", address]) == 2
    assert not (tmp_path / "hc").exists() and not (tmp_path / "pki2").exists()
    (tmp_path / "h.yaml").write_text(yaml.safe_dump({
        "holder_id": 1, "state_dir": str(tmp_path / "state"), "pki": str(tmp_path / "pki"), "max_failures": 0,
        "data": {"vocab_size": 512, "seq_len": 32, "cache_dir": fed_cache}}))
    capsys.readouterr()
    t0 = time.monotonic()
    assert main(["client", "--config", str(tmp_path / "h.yaml"), "--server", address]) == 2
    err = capsys.readouterr().err
    assert f"--server {address!r} is not HOST:PORT" in err and "Traceback" not in err, err
    assert time.monotonic() - t0 < 30
    (tmp_path / "h2.yaml").write_text(yaml.safe_dump({**yaml.safe_load((tmp_path / "h.yaml").read_text()), "server": address}))
    assert main(["client", "--config", str(tmp_path / "h2.yaml")]) == 2
    assert f"server {address!r} is not HOST:PORT" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [
    lambda t: ["simulate", "--out", f"{t}/file.txt/run"],
    lambda t: ["report", str(_fake_run(t / "run")), "--out", f"{t}/file.txt/report"],
    lambda t: ["audit", "--security-only", "--out", f"{t}/file.txt/audit"],
    lambda t: ["corpus", "build", f"{t}/file.txt/corpus"],
    lambda t: ["corpus", "tokenizer", f"{t}/file.txt/tokenizer"],
], ids=["simulate", "report", "audit", "corpus-build", "corpus-tokenizer"])
def test_an_output_path_under_a_file_is_refused_in_one_line_before_any_work(argv, tmp_path, capsys):
    """The crash review's class: an expected failure each command did not catch. An --out under a file was a
    NotADirectoryError traceback (simulate after preparing its data, report, audit, corpus tokenizer after training
    the tokenizer) or "[Errno 17] File exists: '…'" (corpus build)."""
    (tmp_path / "file.txt").write_text("a user's file")
    assert main(argv(tmp_path)) == 2
    err = capsys.readouterr().err
    assert f"cannot be created: {tmp_path / 'file.txt'} is a file, not a folder" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_server_out_holding_a_finished_run_does_not_suggest_resume(tmp_path):
    """The same for `securefed server --out` (RunDir.create): "holds an earlier run: pass --resume" of a finished run."""
    from securefed.runtime.rundir import RunDir

    run = _fake_run(tmp_path / "net", checkpoint=True)
    with pytest.raises(FileExistsError, match="holds an earlier run: pass --resume"):
        RunDir(run).create(resume=False)
    (run / "summary.json").write_text('{"rounds": 1}\n')   # stopped before its report: --resume writes it
    with pytest.raises(FileExistsError, match="holds a run that finished its rounds but has no report: pass --resume"):
        RunDir(run).create(resume=False)
    _finished(run, '{"rounds": 1}\n')
    with pytest.raises(FileExistsError) as e:
        RunDir(run).create(resume=False)
    assert "holds a finished run: choose another --out" in str(e.value) and "--resume" not in str(e.value)


def test_a_starter_holder_config_given_its_own_data_path_says_to_drop_the_shard(tmp_path):
    """A newcomer's walkthrough (stop 49): keygen's starter holder-3.yaml (shard 2 of n_shards 4, the stdlib demo) with
    data.holder_paths set to the holder's own file, as the README shows, said only "lists 1 paths for 4 holders"."""
    from securefed.federation.holder_config import load_holder_config

    (tmp_path / "notes.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "h.yaml").write_text(yaml.safe_dump({"holder_id": 3, "state_dir": str(tmp_path / "s"), "shard": 2,
                                                     "n_shards": 4, "data": {"holder_paths": [str(tmp_path / "notes.jsonl")]}}))
    with pytest.raises(ValueError) as e:
        load_holder_config(str(tmp_path / "h.yaml"))
    assert "1 path(s) for n_shards = 4 holders" in str(e.value) and "removes shard and n_shards" in str(e.value)
