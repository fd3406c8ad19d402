"""Structured logs: one JSON object per line (``--log-json``), for operators' log pipelines.

Fields: ts (UNIX seconds), level, logger, msg, and for round summaries ``event``/``row``. Messages
never contain key material: the transport logs holder ids, stages, byte counts and reasons only.
"""

from __future__ import annotations

import logging
import sys

from securefed import jsonio

__all__ = ["JsonFormatter", "setup_logging"]


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname, "logger": record.name,
               "msg": record.getMessage()}
        for key in ("event", "row"):
            if hasattr(record, key):
                out[key] = getattr(record, key)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info).splitlines()[-1]
        return jsonio.dumps(out, sort_keys=False, default=str)


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream current at setup (a command run
    in-process, as the tests do, must not leave a handler writing to a stream that was closed since)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:
        pass


def setup_logging(*, json_lines: bool, level: str = "INFO") -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = _Stderr()
    handler.setFormatter(JsonFormatter() if json_lines else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(getattr(logging, str(level).upper(), logging.INFO))
    logging.getLogger("securefed").setLevel(getattr(logging, str(level).upper(), logging.INFO))
