"""`securefed server --host H --port 0`: the host is checked before anything is written, as with a fixed port
(transport.md §10, exit 2: "a --host not of this machine, refused before the run directory is written"). A review
found `--port 0` skipped the check: a --host not of this machine failed only at gRPC's bind, after the data, the
pre-flight check and the first checkpoint were written, so the retry with the right --host was refused as 'not
empty'."""

from securefed import cli


def test_a_host_not_of_this_machine_with_port_0_is_one_usage_error_and_writes_nothing(tmp_path, capsys):
    assert cli.main(["keygen", str(tmp_path / "pki"), "--holders", "4"]) == 0
    capsys.readouterr()
    out = tmp_path / "run"
    for host in ("no-such-host.invalid", "192.0.2.1"):   # unresolvable; TEST-NET-1, never an address of this machine
        rc = cli.main(["server", "--pki", str(tmp_path / "pki"), "--out", str(out), "--host", host, "--port", "0"])
        err = capsys.readouterr().err
        assert rc == 2, err
        assert err.startswith(f"securefed server: cannot listen on {host}:0: "), err
        assert "--host must be an address of this machine" in err and "Traceback" not in err and err.count("\n") == 1
        assert not out.exists()
