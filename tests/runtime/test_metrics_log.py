"""metrics.jsonl through MetricsLog: strict JSON, atomic appends, resume, Lightning's CSV logger opt-in."""

import csv
import json
import math

import pytest

from securefed import jsonio
from securefed.runtime.config import LoggingConfig, load_run_config
from securefed.runtime.metrics_log import MetricsLog, check_loggers


def strict(text):
    return json.loads(text, parse_constant=lambda t: pytest.fail(f"bare {t} in JSON"))


def test_rows_are_strict_json_with_string_infinities(tmp_path):
    log = MetricsLog.open(tmp_path)
    log.append({"round": 1, "train_loss": float("nan"), "eval_ppl": float("inf"), "epsilon": float("inf"),
                "delta": None, "warnings": ["non-finite loss: ..."]})
    log.append({"round": 2, "train_loss": 4.5, "eval_ppl": 90.0})
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [strict(x) for x in lines]
    assert rows[0]["train_loss"] == "nan" and rows[0]["eval_ppl"] == "inf" and rows[1]["eval_ppl"] == 90.0
    assert math.isinf(jsonio.decode_float(rows[0]["epsilon"])) and log.rows[1] == rows[1]


def test_an_unencodable_row_leaves_the_file_as_it_was(tmp_path):
    log = MetricsLog.open(tmp_path)
    log.append({"round": 1, "train_loss": 5.0})
    before = (tmp_path / "metrics.jsonl").read_bytes()
    with pytest.raises(TypeError):
        log.append({"round": 2, "train_loss": object()})
    assert (tmp_path / "metrics.jsonl").read_bytes() == before and len(log.rows) == 1


def test_resume_keeps_earlier_rounds_and_names_a_corrupt_line(tmp_path):
    log = MetricsLog.open(tmp_path)
    for r in (1, 2, 3):
        log.append({"round": r, "train_loss": 5.0 - r})
    again = MetricsLog.open(tmp_path, resume_round=3)
    assert [r["round"] for r in again.rows] == [1, 2]
    assert [r["round"] for r in jsonio.read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"round": 3, "train_lo')
    with pytest.raises(jsonio.JSONFileError, match=r"metrics.jsonl, line 3: not valid JSON"):
        MetricsLog.open(tmp_path, resume_round=3)


def test_csv_logger_is_opt_in_and_gets_the_numbers(tmp_path):
    log = MetricsLog.open(tmp_path, LoggingConfig(csv=True))
    log.append({"round": 1, "train_loss": 5.0, "aggregation": "secagg", "eval_ppl": float("inf")})
    log.append({"round": 2, "train_loss": 4.0, "aggregation": "secagg"})
    log.close()
    with open(tmp_path / "logs" / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["step"], float(r["train_loss"])) for r in rows] == [("1", 5.0), ("2", 4.0)]
    assert "aggregation" not in rows[0] and rows[0]["eval_ppl"] == "inf"
    assert not (MetricsLog.open(tmp_path / "plain").path.parent / "logs").exists()


def test_logging_section_in_the_run_config(monkeypatch):
    cfg = load_run_config(overrides=["logging.csv=true"])
    assert cfg.logging == LoggingConfig(csv=True, tensorboard=False)
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ValueError, match="needs the tensorboard package"):
        check_loggers(LoggingConfig(tensorboard=True))
