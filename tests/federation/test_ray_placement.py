"""Holders placed on GPUs by the Ray backend (issue 17): one holder per GPU, and placements that
contradict the run's training settings refused before Ray starts and before RUN_DIR exists."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from securefed.federation.ray_cluster import RayResourcesError, check_placement, holders_that_fit
from securefed.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[2]


def test_eight_holders_one_per_gpu_fill_an_eight_gpu_host():
    host = [{"CPU": 128.0, "GPU": 8.0}]
    assert holders_that_fit(host, 1.0, 1.0) == 8        # 8 × 125m holders, one each
    assert holders_that_fit(host, 1.0, 1.0) < 9          # a ninth would wait forever: refused by connect
    assert holders_that_fit(host, 1.0, 8.0) == 1         # one 7b holder sharded over all 8 (train.devices=8)
    assert holders_that_fit(host, 1.0, 4.0) == 2


@pytest.mark.parametrize("train, gpus, match", [
    (TrainConfig(accelerator="cpu"), 1.0, "train.accelerator=cpu never uses"),
    (TrainConfig(accelerator="cuda"), 0.0, "needs --ray-gpus-per-holder > 0"),
    (TrainConfig(), 2.0, "uses train.devices=1"),
    (TrainConfig(devices=4, strategy="fsdp"), 0.5, "needs --ray-gpus-per-holder 4"),
])
def test_placement_that_contradicts_training_is_refused(train, gpus, match):
    with pytest.raises(RayResourcesError, match=match):
        check_placement(train, gpus)


@pytest.mark.parametrize("train, gpus", [(TrainConfig(), 0.0), (TrainConfig(), 0.125), (TrainConfig(), 1.0),
                                         (TrainConfig(accelerator="cuda"), 1.0),
                                         (TrainConfig(devices=8, strategy="fsdp"), 8.0)])
def test_consistent_placements_pass(train, gpus):
    check_placement(train, gpus)


def test_cli_gpus_for_a_cpu_trainer_is_one_error_before_the_run_directory(tmp_path, tiny_run, capsys):
    pytest.importorskip("ray")
    from securefed.cli import main

    out = tmp_path / "run"
    sets = [a for o in [*tiny_run, "train.accelerator=cpu"] for a in ("--set", o)]
    rc = main(["simulate", "--backend", "ray", "--ray-gpus-per-holder", "1", "--out", str(out), "--quiet", *sets])
    err = capsys.readouterr().err
    assert rc == 2 and "train.accelerator=cpu never uses" in err, err
    assert not out.exists()


def test_cli_holder_on_several_devices_is_refused_before_the_run_directory(tmp_path, tiny_run, capsys):
    from securefed.cli import main

    out = tmp_path / "run"
    sets = [a for o in [*tiny_run, "train.devices=2", "train.strategy=fsdp"] for a in ("--set", o)]
    rc = main(["simulate", "--out", str(out), "--quiet", *sets])
    err = capsys.readouterr().err
    assert rc == 2 and "train.devices=2" in err and "benchmarks/gpu/fsdp.py" in err, err
    assert not out.exists()


@pytest.mark.slow
def test_ray_gives_each_holder_its_own_gpu(tmp_path):
    # 4 logical GPUs on a CPU machine: Ray's assignment (and CUDA_VISIBLE_DEVICES) is what the actors see
    pytest.importorskip("ray")
    env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_USAGE_STATS_ENABLED="0")
    r = subprocess.run([sys.executable, str(Path(__file__).parent / "ray_gpu_worker.py")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    ids = [g["gpu_ids"] for g in got]
    assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == 4        # one distinct GPU each
    assert all(g["cuda_visible"] == g["gpu_ids"][0] for g in got)                 # and only that one visible
