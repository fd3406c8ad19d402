"""`securefed server --status` on a status.json that is not one `securefed server` wrote (hand-edited, corrupt, another
tool's): one line and a documented exit code (transport.md §10: 2 no status), never a traceback. A review found an
`updated` of 1e300 (OverflowError in time.localtime) and a pid past a C pid_t (OverflowError in os.kill) each ended
`--status` with a Python traceback and exit 1 — the code that means "the server is gone" — and a JSON list printed
as a status with LIVENESS UNKNOWN and exit 0."""

import json
import socket

import pytest

from securefed import cli


def _status(tmp_path, capsys, text):
    run = tmp_path / "run"
    run.mkdir()
    (run / "status.json").write_text(text)
    code = cli.main(["server", "--status", str(run)])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


@pytest.mark.parametrize("updated", [1e300, -1e300])
def test_an_out_of_range_update_time_is_said_not_raised(tmp_path, capsys, updated):
    code, out, err = _status(tmp_path, capsys, json.dumps({"pid": 4_000_000, "host": "elsewhere", "updated": updated,
                                                            "board": {"round": 2, "ended": None}}))
    assert code == 0, err   # written on another host: LIVENESS UNKNOWN, as without the bad time
    assert "LIVENESS UNKNOWN" in err and "unreadable update time" in err


def test_an_ended_run_with_an_out_of_range_update_time(tmp_path, capsys):
    code, _, err = _status(tmp_path, capsys, json.dumps({"updated": 1e300, "board": {
        "ended": {"after_round": 3, "why": "finished"}}}))
    assert code == 0 and "run ended after round 3 (finished)" in err


@pytest.mark.parametrize("pid", [2 ** 31, 10 ** 20])
def test_a_pid_no_process_can_have_cannot_tell_liveness(tmp_path, capsys, pid):
    code, _, err = _status(tmp_path, capsys, json.dumps({"pid": pid, "host": socket.gethostname(), "updated": 1e9,
                                                         "board": {"round": 1, "ended": None}}))
    assert code == 0 and "LIVENESS UNKNOWN" in err and "names no process id" in err, err


@pytest.mark.parametrize("text", ["[1, 2]", "3", '"status"', "null"])
def test_a_status_that_is_not_a_json_object_is_no_status(tmp_path, capsys, text):
    code, out, err = _status(tmp_path, capsys, text)
    assert code == 2 and out == ""
    assert err.startswith("securefed server: ") and "not a status (not a JSON object)" in err and err.count("\n") == 1
