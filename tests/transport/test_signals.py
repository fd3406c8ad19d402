"""SIGTERM (a service manager's stop, `kill`) to a real `securefed server` / `securefed client`: the same way out as
Ctrl-C — one line naming the signal and what to do next, exit 128 + 15, never a process that simply vanishes (the
crash review: `kill PID` of a server mid-round left a log that just ended, exit -15, nothing said)."""

import signal

import pytest
import yaml

from securefed.transport.pki import make_demo_pki

from .procs import Procs, read_json, wait_until

pytestmark = pytest.mark.slow

ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def test_sigterm_to_a_server_or_a_client_says_so_and_how_to_go_on(tmp_path, tiny_run, fed_cache):
    pki = make_demo_pki(tmp_path / "pki", holders=3)
    out = tmp_path / "run"
    procs = Procs(tmp_path)
    sets = sum((["--set", o] for o in tiny_run + ["federation.n_holders=3", "data.max_sources=3"]), [])
    holder = {"holder_id": 1, "state_dir": str(tmp_path / "state1"), "pki": str(pki.root), "max_failures": 1000,
              "server": "127.0.0.1:9", "data": {"max_sources": 3, "max_bytes_per_source": 30000, "vocab_size": 512,
                                                "seq_len": 32, "cache_dir": fed_cache}}
    (tmp_path / "holder1.yaml").write_text(yaml.safe_dump(holder))
    try:
        # the client dials a closed port, not this server: the two start side by side, each to its waiting state
        procs.start("server", "securefed.cli", "server", "--pki", pki.root, "--out", out, "--port", 0, *sets,
                    env=ONE_THREAD)
        procs.start("client", "securefed.cli", "client", "--config", tmp_path / "holder1.yaml", env=ONE_THREAD)
        wait_until(lambda: (read_json(out / "status.json") or {}).get("port"), 180, "server listening")
        wait_until(lambda: "joining the coordinator at" in procs.log("client"), 180, "the client waiting for its coordinator")
        for name in ("server", "client"):
            procs.procs[name].send_signal(signal.SIGTERM)
            assert procs.wait(name, 60) == 128 + signal.SIGTERM, procs.log(name)[-2000:]
    finally:
        procs.cleanup()
    server, client = procs.log("server"), procs.log("client")
    assert "securefed server: interrupted (SIGTERM); the run in" in server and "--resume" in server, server[-2000:]
    assert "securefed client: interrupted (SIGTERM); start the client again with the same --config" in client, \
        client[-2000:]
    assert "Traceback" not in server + client
