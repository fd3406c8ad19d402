"""A holder config that asks for CUDA on a machine without it (README's sample config says `accelerator: cuda`) is
one usage error (exit 2) before the client connects (transport.md §10: "bad or contradictory holder config"). A
review found it joined the run and then died in Lightning's Fabric with a RuntimeError traceback, exit 1."""

import yaml

from securefed import cli


def test_cuda_without_a_cuda_device_is_a_usage_error_before_connecting(tmp_path, capsys, monkeypatch):
    import torch

    from securefed.federation import client as fed_client

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(fed_client, "run_holder", lambda *a, **k: (_ for _ in ()).throw(AssertionError("connected")))
    assert cli.main(["keygen", str(tmp_path / "pki"), "--holders", "4"]) == 0
    cfg = tmp_path / "holder1.yaml"
    cfg.write_text(yaml.safe_dump({"holder_id": 1, "state_dir": str(tmp_path / "state1"), "pki": str(tmp_path / "pki"),
                                   "hardware": {"accelerator": "cuda", "precision": "bf16-mixed"}}))
    capsys.readouterr()
    rc = cli.main(["client", "--config", str(cfg), "--server", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "hardware.accelerator is cuda" in err and "0 usable CUDA device(s)" in err and "Traceback" not in err
    assert not (tmp_path / "state1").exists()   # nothing of this holder's state written, nothing sent


def test_a_holder_on_several_devices_is_a_usage_error_before_connecting(tmp_path, capsys, monkeypatch):
    """hardware.devices 2 went to Fabric, whose launcher re-runs the process once per extra device: a second
    `securefed client` with this holder's identity and state_dir (found with the check above). Refused, as
    simulate refuses train.devices > 1."""
    from securefed.federation import client as fed_client

    monkeypatch.setattr(fed_client, "run_holder", lambda *a, **k: (_ for _ in ()).throw(AssertionError("connected")))
    assert cli.main(["keygen", str(tmp_path / "pki"), "--holders", "4"]) == 0
    cfg = tmp_path / "holder1.yaml"
    cfg.write_text(yaml.safe_dump({"holder_id": 1, "state_dir": str(tmp_path / "state1"), "pki": str(tmp_path / "pki"),
                                   "hardware": {"accelerator": "cpu", "devices": 2}}))
    capsys.readouterr()
    rc = cli.main(["client", "--config", str(cfg), "--server", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert rc == 2 and "hardware.devices=2: a holder on several devices is not yet part of a federation run" in err, err
    assert "Traceback" not in err and not (tmp_path / "state1").exists()
