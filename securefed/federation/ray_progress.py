"""Progress of a long multi-holder run: each holder's state in the current round, and the round's ETA.

    training   θ_r sent; the holder trains K steps and encodes its update (stages MODEL, PLAN)
    busy       it is handling another stage (offer, CKKS keys, masking, unmasking)
    waiting    it answered; it waits for the other holders or the coordinator's next stage
    done       the round is over for it
    dropped    its actor died or it missed a stage deadline this round (dead holders stay dropped)
    out        not in this round (not sampled, or it refused the offer)

The channel reports events (stage sent, reply, late, dead, round begun/ended); this object keeps the
states and shows one line:

    round 3/10 · SECAGG_MASKED · training 0 · busy 2 · waiting 5 · dropped 1 [4] · 41s, round ETA ~19s, run ETA ~7m

On a terminal the line is a live row under the round bar, redrawn each second; otherwise (a log file,
CI) it is printed as a heartbeat every ``heartbeat_s`` seconds (30 by default), and at each new stage at
most every ``heartbeat_s / 3``. The ETA is the mean length of the finished rounds; the first round has none.
"""

from __future__ import annotations

import threading
import time

from securefed.federation.stages import Stage

__all__ = ["RoundWatch", "STATES"]

STATES = ("training", "busy", "waiting", "done", "dropped", "out")
_TRAINING = (Stage.MODEL, Stage.PLAN)


class RoundWatch:
    def __init__(self, holders: list[int], *, rounds: int, progress=None, heartbeat_s: float = 30.0,
                 clock=time.monotonic) -> None:
        self.holders, self.rounds, self.progress = list(holders), rounds, progress
        self.heartbeat_s, self.clock = heartbeat_s, clock
        self.state = {h: "out" for h in self.holders}
        self.dead: set[int] = set()
        self.round: int | None = None
        self.stage_name = "starting holders"
        self.round_t0 = self.clock()
        self.durations: list[float] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_print = 0.0
        self._live = None

    # ------------------------------------------------------------------ events from the channel
    def start(self) -> None:
        """Start showing the line (a no-op without an enabled progress)."""
        if self.progress is None or not getattr(self.progress, "enabled", False) or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="securefed-round-watch", daemon=True)
        self._thread.start()

    def phase(self, name: str, addressed: list[int], state: str = "busy") -> None:
        """Outside rounds (starting the actors, welcoming them): ``addressed`` are at work on ``name``."""
        with self._lock:
            self.stage_name = name
            for h in addressed:
                self.state[h] = state
        self._maybe_print(new_stage=True, at_once=self.round is None)

    def begin_round(self, r: int) -> None:
        with self._lock:
            self.round, self.stage_name, self.round_t0 = r, "offer", self.clock()
            for h in self.holders:
                self.state[h] = "dropped" if h in self.dead else "out"

    def stage(self, stage: Stage, addressed: list[int]) -> None:
        self.phase(stage.name, addressed, "training" if stage in _TRAINING else "busy")

    def replied(self, h: int) -> None:
        with self._lock:
            if self.state.get(h) != "dropped":
                self.state[h] = "waiting"

    def late(self, h: int) -> None:
        with self._lock:
            self.state[h] = "dropped"

    def dropped(self, h: int) -> None:
        with self._lock:
            self.dead.add(h)
            self.state[h] = "dropped"

    def end_round(self, r: int) -> None:
        with self._lock:
            self.durations.append(self.clock() - self.round_t0)
            for h in self.holders:
                if self.state[h] in ("training", "busy", "waiting"):
                    self.state[h] = "done"
            self.stage_name = "round over"

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    # ------------------------------------------------------------------ the line
    def counts(self) -> dict[str, int]:
        with self._lock:
            return {s: sum(1 for v in self.state.values() if v == s) for s in STATES}

    def eta(self) -> tuple[float | None, float | None]:
        """(seconds left in this round, seconds left in the run), None before a round has finished."""
        with self._lock:
            if not self.durations:
                return None, None
            mean = sum(self.durations) / len(self.durations)
            left = max(0.0, mean - (self.clock() - self.round_t0)) if self.stage_name != "round over" else 0.0
            later = max(0, self.rounds - (self.round or 0))
            return left, left + later * mean

    def line(self) -> str:
        c = self.counts()
        with self._lock:
            r, stage, elapsed = self.round, self.stage_name, self.clock() - self.round_t0
            dropped = sorted(h for h, v in self.state.items() if v == "dropped")
        parts = [f"round {r}/{self.rounds}", stage] if r else [stage]
        parts += [f"{s} {c[s]}" for s in ("training", "busy", "waiting", "done") if c[s] or s == "training"]
        if dropped:
            shown = ",".join(map(str, dropped[:10])) + (",…" if len(dropped) > 10 else "")
            parts.append(f"dropped {len(dropped)} [{shown}]")
        left, total = self.eta()
        when = f"{_dur(elapsed)} in round" if r else _dur(elapsed)
        when += f", round ETA ~{_dur(left)}, run ETA ~{_dur(total)}" if left is not None else ", round ETA n/a (first round)"
        return " · ".join(parts) + " · " + when

    def _maybe_print(self, *, new_stage: bool = False, at_once: bool = False) -> None:
        """A line now if the last one is ``heartbeat_s`` old (a third of it at a new stage); ``at_once``: a
        phase outside rounds (starting the actors, the welcome) is shown when it begins, whatever the gap."""
        if self._thread is None or self._live is not None:
            return
        now = self.clock()
        gap = 0.0 if at_once else self.heartbeat_s / 3 if new_stage else self.heartbeat_s
        if now - self._last_print >= gap:
            self._last_print = now
            console = getattr(self.progress, "console", None)
            if console is not None:      # one line per heartbeat in a log, however long
                console.print(self.line(), soft_wrap=True, highlight=False)
            else:
                self.progress.print(self.line())

    def _run(self) -> None:
        """Terminal: a live row redrawn each second. Otherwise: the heartbeat."""
        console = getattr(self.progress, "console", None)
        if console is not None and console.is_terminal:
            from rich.errors import LiveError
            from rich.live import Live

            try:
                with Live(self.line(), console=console, refresh_per_second=2, transient=True) as live:
                    self._live = live
                    while not self._stop.wait(1.0):
                        live.update(self.line())
                return
            except LiveError:   # rich < 14 cannot nest it under the round bar: print heartbeats instead
                pass
            finally:
                self._live = None
        self._last_print = self.clock()
        while not self._stop.wait(1.0):
            self._maybe_print()


def _dur(s: float) -> str:
    s = int(round(s))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
