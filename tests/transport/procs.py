"""Process helpers for the loopback end-to-end tests: own process groups, bounded waits, always cleaned up."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path


class Procs:
    def __init__(self, logdir: Path) -> None:
        self.logdir, self.procs = logdir, {}

    def start(self, name: str, module: str, *args: str, env: dict | None = None,
              max_file_bytes: int | None = None) -> subprocess.Popen:
        """``max_file_bytes``: the process may write no file larger (RLIMIT_FSIZE: the kernel's own short write, then
        EFBIG), a full disk without root or a small filesystem."""
        out = open(self.logdir / f"{name}.log", "ab")

        def limit() -> None:
            import resource

            resource.setrlimit(resource.RLIMIT_FSIZE, (max_file_bytes, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
        p = subprocess.Popen([sys.executable, "-m", module, *map(str, args)], stdout=out, stderr=subprocess.STDOUT,
                             start_new_session=True, env={**os.environ, **(env or {})},
                             preexec_fn=limit if max_file_bytes is not None else None)
        self.procs[name] = p
        return p

    def kill(self, name: str) -> None:
        p = self.procs[name]
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)      # the process group we created: nothing else
        p.wait(timeout=30)

    def wait(self, name: str, timeout: float) -> int:
        return self.procs[name].wait(timeout=timeout)

    def log(self, name: str) -> str:
        return (self.logdir / f"{name}.log").read_text(errors="replace")

    def cleanup(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(timeout=30)


def wait_until(pred, timeout: float, what: str, poll: float = 0.2):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
