"""The coordinator's log lines that one holder's calls make, rate-limited per holder (protocols/transport.md §2).

Every Join, every refused stream or fetch, every "too late" is one line of the coordinator's log, and an
authenticated holder makes as many calls as it likes, one after another: a review's holder made 5,207 Joins in
10 s, each one logged (≈ 66 KB/s, 5.7 GB a day, from one holder). A holder's calls may log ``PER_MINUTE``
lines a minute; the rest are counted, and the first line of its next minute says how many were left out. An
honest holder logs a few lines a round (a Join after a reconnect, a late reply), far below the limit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

__all__ = ["HolderLog", "PER_MINUTE"]

PER_MINUTE = 30


class HolderLog:
    """``say(hid, level, msg, *args)``: log through ``logger`` unless holder ``hid`` has had ``per_minute`` lines in
    this minute of its own (the window starts at its first line). ``hid`` None: the calls of certificates not on the
    roster (PERMISSION_DENIED, §7.2), which share one budget."""

    def __init__(self, logger: logging.Logger, *, per_minute: int = PER_MINUTE,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger, self.per_minute, self.clock = logger, per_minute, clock
        self._lock = threading.Lock()
        self._window: dict[int | None, list] = {}   # hid -> [window start, lines logged, lines left out]

    def say(self, hid: int | None, level: int, msg: str, *args) -> None:
        with self._lock:
            now = self.clock()
            w = self._window.get(hid)
            left_out = 0
            if w is None or now - w[0] >= 60.0:
                left_out = w[2] if w is not None else 0
                w = self._window[hid] = [now, 0, 0]
            if w[1] >= self.per_minute:
                w[2] += 1
                return
            w[1] += 1
        if left_out:
            who = f"holder {hid}" if hid is not None else "callers not on the roster"
            self.logger.warning("%s: %d more lines about its calls were left out of this log in its last minute (at most "
                                "%d a minute, transport.md §2)", who, left_out, self.per_minute)
        self.logger.log(level, msg, *args)
