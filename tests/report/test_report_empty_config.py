"""An empty config.yaml is a corrupt run file (README: `report` exit 2, "one of its files is corrupt (the message names
the file)", nothing written). A newcomer's review (E): `: > RUN/config.yaml; securefed report RUN` rendered a report,
exit 0 for a verified run, stating "run preset: unknown (no config.yaml)" beside a config.yaml that was there."""

import argparse

from securefed.commands import report as report_cmd


def test_empty_config_yaml_is_named_and_nothing_is_written(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"round": 1, "train_loss": 5.0}\n')
    for text in ("", "\n", "# versions: {\"securefed\": \"0.1.0\"}\n"):
        (run / "config.yaml").write_text(text)
        assert report_cmd.run(argparse.Namespace(run_dir=str(run), out=None)) == 2
        err = capsys.readouterr().err
        assert "config.yaml is empty" in err and "Traceback" not in err
        assert not (run / "report").exists()
