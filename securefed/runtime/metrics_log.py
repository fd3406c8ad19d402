"""RUN_DIR/metrics.jsonl through one writer, and through Lightning's standard loggers when asked.

    log = MetricsLog.open(run_dir, cfg.logging)                  # new run
    log = MetricsLog.open(run_dir, cfg.logging, resume_round=r)  # resume: keeps the rows with round < r
    log.append(row)      # metrics.jsonl rewritten atomically (strict JSON); CSV / TensorBoard get the numbers
    log.rows             # every row so far
    log.close()

metrics.jsonl is always written; it is the run-directory contract. ``logging.csv: true`` adds
RUN_DIR/logs/csv/metrics.csv (``lightning.fabric.loggers.CSVLogger``) and ``logging.tensorboard: true``
adds RUN_DIR/logs/tensorboard/ (``TensorBoardLogger``; needs the tensorboard package, checked by
:func:`check_loggers` before a run starts). Those loggers get the row's numeric fields with the
row's ``round`` as the step; strings (aggregation, warnings) stay in metrics.jsonl only.

The whole file is rewritten through a temporary sibling and a rename on every append, so a crash
leaves the previous complete file, never a torn line (a few hundred rows: the rewrite costs nothing).
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

from securefed import jsonio
from securefed.runtime.config import LoggingConfig
from securefed.runtime.rundir import RunDir, atomic_write_text

__all__ = ["MetricsLog", "check_loggers", "numeric_fields"]


def check_loggers(cfg: LoggingConfig) -> None:
    """Refuse at once (ValueError) a logger whose package is not installed; imports nothing heavy."""
    if cfg.tensorboard and not any(importlib.util.find_spec(m) for m in ("tensorboard", "tensorboardX")):
        raise ValueError("logging.tensorboard=true needs the tensorboard package: pip install tensorboard "
                         "(or set logging.tensorboard=false; metrics.jsonl is always written)")


def numeric_fields(row: dict) -> dict[str, float]:
    """The fields a standard logger can plot: numbers (and "inf"/"-inf"/"nan" strings) as floats,
    booleans as 0/1; ``round`` is the step, not a metric."""
    out = {}
    for k, v in row.items():
        if k == "round":
            continue
        if isinstance(v, bool):
            out[k] = float(v)
        elif isinstance(v, (int, float)):
            out[k] = float(v)
        elif isinstance(v, str) and v in ("inf", "-inf", "nan"):
            out[k] = jsonio.decode_float(v)
    return out


class MetricsLog:
    def __init__(self, path: str | Path, *, rows: list[dict] | None = None, loggers: list[Any] | None = None) -> None:
        self.path = Path(path)
        self._rows = list(rows or [])
        self._loggers = list(loggers or [])

    @classmethod
    def open(cls, run_dir: RunDir | str | Path, cfg: LoggingConfig | None = None, *,
             resume_round: int | None = None) -> MetricsLog:
        """The run's metrics log. ``resume_round``: keep the existing rows with ``round < resume_round``
        (a corrupt metrics.jsonl is a jsonio.JSONFileError naming the line) and replay them into the
        CSV logger, whose file is rewritten from scratch."""
        rd = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        cfg = cfg or LoggingConfig()
        check_loggers(cfg)
        rows = []
        if resume_round is not None:
            rows = [r for r in jsonio.read_jsonl(rd.metrics) if r.get("round", math.inf) < resume_round]
        loggers: list[Any] = []
        if cfg.csv:
            from lightning.fabric.loggers import CSVLogger

            csv = CSVLogger(rd.root / "logs", name="csv", version="", flush_logs_every_n_steps=1)
            for r in rows:
                csv.log_metrics(numeric_fields(r), step=int(r["round"]))
            loggers.append(csv)
        if cfg.tensorboard:  # earlier events stay in their own event file: nothing to replay
            from lightning.fabric.loggers import TensorBoardLogger

            loggers.append(TensorBoardLogger(rd.root / "logs", name="tensorboard", version="", default_hp_metric=False))
        log = cls(rd.metrics, rows=rows, loggers=loggers)
        if resume_round is not None:
            log._write()  # drop rows of rounds that will be re-run
        return log

    @property
    def rows(self) -> list[dict]:
        return list(self._rows)

    def append(self, row: dict) -> None:
        if not isinstance(row, dict):
            raise TypeError(f"a metrics row must be a dict, got {type(row).__name__}")
        jsonio.dumps(row)  # refuse an unencodable row before anything is written
        self._rows.append(dict(row))
        self._write()
        step = row.get("round")
        for lg in self._loggers:
            lg.log_metrics(numeric_fields(row), step=int(step) if isinstance(step, int) else None)
            lg.save()

    def close(self) -> None:
        for lg in self._loggers:
            lg.finalize("success")
        self._loggers = []

    def _write(self) -> None:
        atomic_write_text(self.path, "".join(jsonio.dumps(r) + "\n" for r in self._rows))
