"""A disk that fills up under `securefed server` / `securefed client` (real processes; a file-size limit,
RLIMIT_FSIZE, stands in for the full disk: the kernel writes part of a file and then refuses, as ENOSPC does).

The promise (README, federation.md §6): one clear error naming the file, exit 4, no traceback; every file whole as
of its last write; nothing unrecorded sent; restarted once there is room, the party goes on and no spend is lost or
counted twice. Before: both died with torch's "basic_ios::clear: iostream error" traceback (exit 1, no file named),
and a ledger append cut short left a torn line (tests/privacy/test_ledger.py).
"""

from dataclasses import replace

import pytest

from securefed.configio import dump_yaml
from securefed.federation.simulation import holder_configs
from securefed.privacy.ledger import read_ledger
from securefed.runtime.config import load_run_config
from securefed.runtime.rundir import RunDir
from securefed.transport.pki import make_demo_pki

from .procs import Procs, read_json, wait_until

pytestmark = pytest.mark.slow

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
SMALL = 2 << 20   # 2 MiB: the run's config, keys, ledgers and data cache fit; θ (3.6 MB) and a holder's trainer.pt (7 MB) do not


def _setup(tmp_path, tiny_run, *extra):
    overrides = [o for o in tiny_run if not o.startswith(("deterministic_secrets", "network."))]
    cfg = load_run_config(overrides=overrides + ["federation.n_holders=3", "data.max_sources=3", *extra])
    (tmp_path / "run.yaml").write_text(dump_yaml(cfg))
    pki = make_demo_pki(tmp_path / "pki", holders=3)
    out = tmp_path / "run"
    args = ["--pki", pki.root, "--out", out, "--preset", "", "--config", tmp_path / "run.yaml",
            "--set", "network.join=240", "--set", "network.train=240", "--set", "network.control=60",
            "--set", "network.upload=30"]
    return cfg, out, args


def test_a_server_whose_disk_is_full_stops_with_one_error_naming_the_file(tmp_path, tiny_run):
    cfg, out, args = _setup(tmp_path, tiny_run)
    procs = Procs(tmp_path)
    try:
        procs.start("server", "securefed.commands.server", *args, "--port", 0, env=ONE_THREAD, max_file_bytes=SMALL)
        rc = procs.wait("server", 300)
    finally:
        procs.cleanup()
    log = procs.log("server")
    assert rc == 4, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    assert f"cannot write {out / 'checkpoints' / 'model-0.pt'}" in log and "no checkpoint was written yet" in log
    assert not list((out / "checkpoints").glob(".*")), "a temporary file was left behind"


def test_a_dp_sgd_holder_whose_disk_fills_stops_before_releasing_and_rejoins_without_losing_spend(tmp_path, tiny_run):
    """Holder 1 (record-level DP-SGD) cannot write its checkpoint at round 1's release (its accountant goes to disk
    before the release): it exits 4 with the file named, having released nothing of round 1. Restarted with room, it
    rejoins; the run ends, and every round in the server's sum is released exactly once in each holder's own ledger,
    signed with the record-level steps its checkpoint holds, and `securefed verify` agrees."""
    import subprocess
    import sys

    import torch

    dp = ["train.dp_sgd.enabled=true", "train.dp_sgd.noise_multiplier=1.0", "train.dp_sgd.delta=1.0e-4"]
    cfg, out, args = _setup(tmp_path, tiny_run, "federation.rounds=3", *dp)
    rd, status = RunDir(out), out / "status.json"
    procs = Procs(tmp_path)
    try:
        procs.start("server", "securefed.commands.server", *args, "--port", 0, env=ONE_THREAD)
        port = wait_until(lambda: (read_json(status) or {}).get("port"), 180, "server ready")
        for h, hc in holder_configs(cfg, tmp_path).items():
            hc = replace(hc, state_dir=str(tmp_path / f"state{h}"), server=f"127.0.0.1:{port}", max_failures=60,
                         hardware=replace(hc.hardware, torch_threads=1))
            (tmp_path / f"holder{h}.yaml").write_text(dump_yaml(hc))
            procs.start(f"holder{h}", "securefed.commands.client", "--config", tmp_path / f"holder{h}.yaml",
                        env=ONE_THREAD, max_file_bytes=SMALL if h == 1 else None)
        assert procs.wait("holder1", 300) == 4, procs.log("holder1")[-3000:]
        log = procs.log("holder1")
        assert "Traceback" not in log and f"cannot write {tmp_path / 'state1' / 'trainer.pt'}" in log, log[-3000:]
        assert "released" not in [e["status"] for e in read_ledger(tmp_path / "state1" / "ledger.jsonl")]
        procs.start("holder1b", "securefed.commands.client", "--config", tmp_path / "holder1.yaml", env=ONE_THREAD)
        assert procs.wait("server", 420) == 0, procs.log("server")[-3000:]
        for name in ("holder1b", "holder2", "holder3"):
            assert procs.wait(name, 120) == 0, procs.log(name)[-3000:]
    finally:
        procs.cleanup()
    server = read_ledger(rd.privacy / "ledger.jsonl")
    assert [e["round"] for e in server] == [1, 2, 3]
    for h in (1, 2, 3):
        own = read_ledger(tmp_path / f"state{h}" / "ledger.jsonl")
        released = [e["round"] for e in own if e["status"] == "released"]
        assert released == sorted(set(released)), f"holder {h} released a round twice: {released}"
        assert released == [e["round"] for e in server if h in e["survivors"]], (h, released)
        steps = torch.load(tmp_path / f"state{h}" / "trainer.pt", weights_only=True)["dp_sgd_accountant"]["history"]
        assert [e["record_level"]["steps"] for e in own if e["status"] == "released"][-1] == sum(s[2] for s in steps)
    assert 1 not in [e["round"] for e in read_ledger(tmp_path / "state1" / "ledger.jsonl") if e["status"] == "released"]
    v = subprocess.run([sys.executable, "-m", "securefed.cli", "verify", str(out), "--roster", str(tmp_path / "pki" /
                        "roster.yaml"), *sum((["--holder-ledger", str(tmp_path / f"state{h}" / "ledger.jsonl")]
                                              for h in (1, 2, 3)), [])], capture_output=True, text=True, timeout=300)
    assert v.returncode == 0, v.stdout + v.stderr


def test_a_simulation_whose_disk_is_full_stops_with_one_error_naming_the_file(tmp_path, tiny_run):
    """The same engine in `securefed simulate`: one error naming the file, exit 4, no traceback (was: exit 1)."""
    out = tmp_path / "run"
    procs = Procs(tmp_path)
    try:
        procs.start("sim", "securefed.cli", "simulate", "--out", out, "--quiet",
                    *sum((["--set", o] for o in tiny_run), []), env=ONE_THREAD, max_file_bytes=SMALL)
        rc = procs.wait("sim", 300)
    finally:
        procs.cleanup()
    log = procs.log("sim")
    assert rc == 4, log[-3000:]
    assert "Traceback" not in log and "securefed simulate: stopped: cannot write" in log, log[-3000:]


def test_a_checkpoint_torch_cannot_serialise_is_a_bug_not_a_full_disk(tmp_path):
    """atomic_torch_save turns torch's own failed-write RuntimeErrors into WriteError ("free space"); any other
    RuntimeError out of torch.save is a bug and must say so, not send the operator to free disk space."""
    from securefed.runtime.rundir import WriteError, atomic_torch_save

    class Bad:
        def __reduce__(self):
            raise RuntimeError("a bug in a state dict")

    with pytest.raises(RuntimeError, match="a bug in a state dict") as e:
        atomic_torch_save({"x": Bad()}, tmp_path / "c.pt")
    assert not isinstance(e.value, WriteError)
    assert list(tmp_path.iterdir()) == []          # no temporary file left behind
