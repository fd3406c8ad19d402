"""A document nested deeper than the parser can recurse ("[" * 100000) — a file, an argument or a peer's message —
is the one clear error each reader already gives for malformed input, never a RecursionError traceback; so is a
JSON/YAML value of the wrong top-level type where the reader expects an object (security review: nested input).

Every JSON parse goes through securefed.jsonio.loads / read_json, every YAML parse through
securefed.configio.parse_yaml (imports of new names sit inside the tests, so each one fails on its own against
code without them)."""

import types

import pytest

from securefed.cli import main

DEEP = "[" * 100000


def _no_traceback(out: str) -> None:
    assert "Traceback" not in out and "RecursionError" not in out


# ------------------------------------------------------------------------------------------- the shared parsers
def test_parse_yaml_turns_a_too_deep_document_into_a_yaml_error():
    import yaml

    from securefed.configio import parse_yaml

    with pytest.raises(yaml.YAMLError, match="nested too deeply"):
        parse_yaml(DEEP)
    assert parse_yaml("a: [1, 2]") == {"a": [1, 2]}


# ------------------------------------------------------------------------------------------- peer input
def test_transport_parse_json_refuses_a_too_deep_or_non_object_payload():
    from securefed.transport.service import MAX_JSON, parse_json

    with pytest.raises(ValueError, match=r"^status: not JSON \(ValueError: nested too deeply\)"):
        parse_json(DEEP.encode()[: MAX_JSON - 1], "status")
    with pytest.raises(ValueError, match="status: not a JSON object"):
        parse_json(b"[1]", "status")
    assert parse_json(b'{"port": 1}', "status") == {"port": 1}


@pytest.mark.parametrize("payload, message", [
    (DEEP.encode(), r"WAIT payload is not JSON \(ValueError: nested too deeply\)"),
    (b"[1, 2]", "WAIT payload is not a JSON object"),
    (b'"ended"', "WAIT payload is not a JSON object"),
    (b"\xff\xfe", "WAIT payload is not JSON"),
    (b'{"reason": NaN}', "WAIT payload is not JSON"),
])
def test_a_holder_refuses_a_wait_payload_that_is_not_a_json_object(payload, message):
    """grpc._round: a WAIT frame the coordinator sends is parsed here; a FrameError is a failed attempt that the
    holder's connection loop retries (never a crash, never an AttributeError on .get)."""
    from securefed.federation.grpc import _wait_info
    from securefed.transport.frames import FrameError

    with pytest.raises(FrameError, match=message):
        _wait_info(payload)
    assert _wait_info(b"") == {} and _wait_info(b'{"reason": "not_yet"}') == {"reason": "not_yet"}


def test_a_federation_message_with_a_too_deep_body_is_a_message_error():
    """messages.decode already handled it (checked, not changed)."""
    from securefed.federation.messages import MAGIC, VERSION, MessageError, MsgType, decode

    with pytest.raises(MessageError, match="body is not a JSON document"):
        decode(MAGIC + bytes([VERSION, MsgType.HELLO]) + DEEP.encode())


# ------------------------------------------------------------------------------------------- files and arguments
@pytest.mark.parametrize("name", ["roster.yaml", "roster.json"])
def test_roster_load_refuses_a_too_deep_file(tmp_path, name):
    from securefed.secagg.roster import Roster, RosterError

    (tmp_path / name).write_text(DEEP)
    with pytest.raises(RosterError, match=f"roster file .*{name} does not parse: nested too deeply"):
        Roster.load(tmp_path / name)


def test_run_config_refuses_a_too_deep_config_file_and_override(tmp_path):
    from securefed.configio import ConfigError
    from securefed.runtime.config import load_run_config

    (tmp_path / "c.yaml").write_text(DEEP)
    with pytest.raises(ConfigError, match=r"c.yaml is not valid YAML \(nested too deeply for the YAML parser\)"):
        load_run_config(config_file=tmp_path / "c.yaml")
    with pytest.raises(ConfigError, match=r"the value is not valid YAML \(nested too deeply") as e:
        load_run_config(overrides=["train.lr=" + DEEP])
    assert len(str(e.value)) < 300   # the 100 kB argument is not echoed whole
    (tmp_path / "list.yaml").write_text("[1, 2]\n")
    with pytest.raises(ConfigError, match="must hold a mapping at the top level"):
        load_run_config(config_file=tmp_path / "list.yaml")


def test_simulate_with_a_too_deep_config_is_one_configuration_error(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.yaml").write_text(DEEP)
    assert main(["simulate", "--config", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "configuration error: config file" in err and "nested too deeply" in err
    _no_traceback(err)
    assert not (tmp_path / "run").exists()


def _config_only_run(d):
    d.mkdir()
    (d / "config.yaml").write_text(DEEP)
    (d / "metrics.jsonl").write_text('{"round": 1, "train_loss": 5.0}\n')
    return d


def test_report_of_a_run_whose_config_yaml_is_too_deep_exits_2_naming_it(tmp_path, capsys):
    rd = _config_only_run(tmp_path / "run")
    assert main(["report", str(rd)]) == 2
    out = capsys.readouterr()
    assert "config.yaml is not valid YAML (nested too deeply" in out.err
    _no_traceback(out.out + out.err)
    assert not (rd / "report").exists()


def test_verify_and_report_with_a_too_deep_roster_do_not_verify(tmp_path, capsys):
    """pki/roster.yaml (read through Roster.load): not verified, one message, no traceback."""
    from tests.report.signed_run import make_signed_run

    rd = tmp_path / "run"
    make_signed_run(rd, drop_last_holder_at=3)
    (rd / "pki").mkdir()
    (rd / "pki" / "roster.yaml").write_text(DEEP)
    assert main(["verify", str(rd)]) == 1
    out = capsys.readouterr()
    assert "roster.yaml does not parse: nested too deeply" in out.out + out.err
    _no_traceback(out.out + out.err)
    assert main(["report", str(rd)]) == 1
    out = capsys.readouterr()
    _no_traceback(out.out + out.err)


def test_a_run_dir_whose_config_yaml_is_too_deep_is_described_and_refused_on_resume(tmp_path):
    from securefed.runtime.rundir import RunDirError, check_out_dir, describe_run

    rd = _config_only_run(tmp_path / "run")
    (rd / "checkpoints").mkdir()
    (rd / "checkpoints" / "latest.pt").write_bytes(b"not read")
    assert describe_run(rd) == "config.yaml unreadable: YAMLError"
    with pytest.raises(RunDirError, match=r"config.yaml cannot be read \(YAMLError: nested too deeply"):
        check_out_dir(rd, resume=True, resolved={"seed": 1})
    (rd / "config.yaml").write_text("[1, 2]\n")   # fail closed: settings that cannot be compared are not "the same"
    with pytest.raises(RunDirError, match="config.yaml does not hold a mapping"):
        check_out_dir(rd, resume=True, resolved={"seed": 1})


def test_a_resumed_coordinator_skips_a_too_deep_config_yaml(tmp_path):
    """_record_resume_changes: an unreadable config.yaml is left as it is (check_out_dir refused it before)."""
    from securefed.federation.coordinator import Coordinator

    (tmp_path / "config.yaml").write_text(DEEP)
    fake = types.SimpleNamespace(rd=types.SimpleNamespace(config=tmp_path / "config.yaml"), cfg=None)
    assert Coordinator._record_resume_changes(fake) is None
    assert (tmp_path / "config.yaml").read_text() == DEEP


@pytest.mark.parametrize("text", [DEEP])
def test_a_holder_state_file_that_is_too_deep_or_not_an_object_is_a_holder_state_error(tmp_path, text):
    from securefed.federation.holder import Holder, HolderStateError

    (tmp_path / "holder_state.json").write_text(text)
    with pytest.raises(HolderStateError, match="holder_state.json"):
        Holder._read_state_file(types.SimpleNamespace(_state_file=tmp_path / "holder_state.json"))


@pytest.mark.parametrize("text", [DEEP, "[1]"])
def test_the_launcher_waits_past_a_too_deep_or_non_object_status_json(tmp_path, text):
    """launch._wait_port polls status.json while the coordinator starts: a file that is not a status is 'not yet'."""
    from securefed.federation.launch import LaunchError, _wait_port

    (tmp_path / "status.json").write_text(text)
    server = types.SimpleNamespace(poll=lambda: None, pid=77)
    with pytest.raises(LaunchError, match="did not start listening"):
        _wait_port(tmp_path / "status.json", server, tmp_path / "server.log", 0.3)
    (tmp_path / "status.json").write_text('{"port": 4242, "pid": 77}')
    assert _wait_port(tmp_path / "status.json", server, tmp_path / "server.log", 5.0) == 4242


def test_a_too_deep_jsonl_record_is_a_data_error_naming_the_line(tmp_path):
    from securefed.training.data.documents import load_documents
    from securefed.training.data.textfiles import DataError

    (tmp_path / "d.jsonl").write_text('{"text": "one"}\n' + DEEP + "\n")
    with pytest.raises(DataError, match=r"d.jsonl, line 2: not valid JSON \(nested too deeply\)"):
        load_documents(tmp_path / "d.jsonl")


@pytest.mark.parametrize("text", [DEEP, "[1]"])
def test_a_corpus_manifest_that_is_too_deep_or_not_an_object(tmp_path, text):
    """load_documents: the manifest only orders sources, and a bad one is ignored (as before); corpus stats names it."""
    from securefed.training.data.corpus import corpus_stats
    from securefed.training.data.documents import load_documents
    from securefed.training.data.textfiles import DataError

    (tmp_path / "a.txt").write_text("a document\n")
    (tmp_path / "manifest.json").write_text(text)
    assert [d.text for d in load_documents(tmp_path)] == ["a document\n"]
    with pytest.raises(DataError, match="manifest.json (is not valid JSON: nested too deeply|does not hold a JSON object)"):
        corpus_stats(tmp_path)
