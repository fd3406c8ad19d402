"""A newcomer's first hour with `securefed` (review E): each mistake is one usage error (exit 2, no traceback,
nothing written), and piping a command's output into `head` never ends in a BrokenPipeError traceback."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _cli(args, tmp_path, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "securefed.cli", *args], cwd=tmp_path, env=env,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.parametrize("n", ["0", "-2"])
def test_threads_per_holder_below_one_is_a_usage_error_before_anything_is_written(tmp_path, n):
    # was: the data prepared, then a ValueError traceback (exit 1) from HolderHardware, and RUN_DIR left half-made
    # (config.yaml, pki/, ...), which then refused the same --out as "another run that stopped before its checkpoint"
    p = _cli(["simulate", "--threads-per-holder", n, "--out", "run"], tmp_path, stdout=subprocess.PIPE)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2, err
    assert "--threads-per-holder: expected a positive integer" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs").exists()


def test_log_level_typo_is_a_usage_error(tmp_path):
    # was: any value accepted, quietly WARNING (`--log-level DEBG` showed no debug lines and said nothing)
    p = _cli(["--log-level", "DEBG", "simulate", "--list-presets"], tmp_path, stdout=subprocess.PIPE)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2 and "--log-level: expected DEBUG, INFO, WARNING or ERROR, got 'DEBG'" in err
    assert out == ""
    p = _cli(["--log-level", "info", "simulate", "--list-presets"], tmp_path, stdout=subprocess.PIPE)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and "demo" in out.split()


def test_output_into_a_closed_pipe_is_no_traceback(tmp_path):
    # `securefed simulate --list-presets | head -0` / `securefed verify RUN | head -1`: the reader has gone before the
    # command writes. Was: "BrokenPipeError: [Errno 32] Broken pipe" traceback, exit 1 (for verify and report: "a
    # record does not verify")
    r, w = os.pipe()
    os.close(r)   # the reader is gone before the command prints
    try:
        p = _cli(["simulate", "--list-presets"], tmp_path, stdout=w)
    finally:
        os.close(w)
    _, err = p.communicate(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert p.returncode == 141
