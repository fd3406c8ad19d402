"""The run directory contract (shared/DESIGN.md): every file written atomically.

RUN_DIR/config.yaml, metrics.jsonl, summary.json, privacy/ledger.jsonl, report/, checkpoints/, model/,
plus baseline/metrics.jsonl (the centralized baseline's curve) and secagg_transcript/ when asked.
Whole files are written to a temporary sibling and renamed (os.replace is atomic on POSIX), so a crash
never leaves a half-written file; metrics.jsonl is rewritten whole each round for the same reason.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["RunDir", "atomic_write_bytes", "atomic_write_text", "atomic_torch_save", "default_run_dir"]


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: Path) -> None:
    import torch  # lazily: network holder processes use this module without paying for torch

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_run_dir(root: str | Path = "runs") -> Path:
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"run-{stamp}"


class RunDir:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # paths of the contract
    config = property(lambda self: self.root / "config.yaml")
    metrics = property(lambda self: self.root / "metrics.jsonl")
    summary = property(lambda self: self.root / "summary.json")
    privacy = property(lambda self: self.root / "privacy")
    report = property(lambda self: self.root / "report")
    checkpoints = property(lambda self: self.root / "checkpoints")
    model = property(lambda self: self.root / "model")
    baseline = property(lambda self: self.root / "baseline")
    transcript = property(lambda self: self.root / "secagg_transcript")

    @property
    def checkpoint_file(self) -> Path:
        return self.checkpoints / "latest.pt"

    def create(self, *, resume: bool) -> None:
        if self.root.exists() and any(self.root.iterdir()) and not resume:
            if self.checkpoint_file.exists():
                raise FileExistsError(f"{self.root} holds an earlier run: pass --resume to continue it, or choose another --out")
            raise FileExistsError(f"{self.root} exists and is not empty: choose another --out")
        for d in (self.root, self.privacy, self.checkpoints):
            d.mkdir(parents=True, exist_ok=True)

    def write_json(self, path: Path, obj: Any) -> None:
        atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")

    def write_jsonl(self, path: Path, rows: list[dict]) -> None:
        atomic_write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    @staticmethod
    def read_jsonl(path: Path) -> list[dict]:
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
