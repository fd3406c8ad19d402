"""Progress of long work that never goes silent: rich bars on a terminal, plain lines in a log file.

    progress = Progress(enabled=True)                      # stderr; a terminal gets bars, a file lines
    with progress.phase("baseline", total=96, label="centralized baseline") as ph:
        for ...: ph.advance()                              # bars end at N/N; a log gets a line per 10 s
    for h in progress.iter(holders, "round 3: local training"): ...
    progress.print("round 3: 4/4 holders ...")
    progress.phase_seconds                                 # {"baseline": 41.2, ...}: wall time per phase

On a terminal the bars are rich's (they redraw themselves, with elapsed time); each outermost task
leaves one line saying where it ended ("federated rounds: 16/16 in 2 min 10 s", or "stopped at 7/16").
Anywhere else (CI, nohup, a scheduler, ``> run.log``) there are no bars: a task writes a line when it
starts, a progress line at most every ``min_interval_s`` as it advances, a line when it ends, and a
background ticker writes a heartbeat whenever ``heartbeat_s`` pass without any line — so a single
long call (a tokenizer training, one long baseline chunk) is never a silent gap of more than
``heartbeat_s`` + one tick. ``tick()`` is that check; tests call it with an injected clock.

Layer 0 (rich only): the data pipeline (training layer) and the runtime share one implementation.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import IO, Any, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as _RichProgress, TextColumn, TimeElapsedColumn
from rich.text import Text

__all__ = ["Progress", "Task", "format_seconds"]

T = TypeVar("T")


def format_seconds(s: float) -> str:
    """3.2 s, 42 s, 2 min 10 s, 1 h 02 min."""
    if s < 10:
        return f"{s:.1f} s"
    if s < 60:
        return f"{s:.0f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


@dataclass
class Task:
    """One piece of work on the stack; ``advance()`` and ``note()`` are what callers use."""

    owner: Progress
    label: str
    total: int | None
    started: float
    announce: bool = False  # write an end line even when nested (outermost tasks and phases always do)
    headline: bool = False  # write a start line (outermost tasks and phases)
    done: int = 0
    detail: str = ""
    rich_id: Any = field(default=None, repr=False)

    def advance(self, n: int = 1, *, note: str | None = None) -> None:
        self.owner._advance(self, n, note)

    def note(self, text: str) -> None:
        """A short status shown beside the count (e.g. "eval at 262k tokens")."""
        self.detail = text

    def status(self) -> str:
        count = f" {self.done}/{self.total}" if self.total is not None else ""
        return f"{self.label}{count}" + (f" ({self.detail})" if self.detail else "")


class Progress:
    def __init__(self, *, enabled: bool = True, stream: IO[str] | None = None,
                 clock: Callable[[], float] = time.monotonic, interactive: bool | None = None,
                 heartbeat_s: float = 20.0, min_interval_s: float = 10.0, ticker: bool = True,
                 tick_s: float = 1.0) -> None:
        self.enabled = enabled
        self.stream = stream if stream is not None else sys.stderr
        self.clock = clock
        isatty = getattr(self.stream, "isatty", None)
        self.interactive = bool(isatty and isatty()) if interactive is None else interactive
        self.heartbeat_s, self.min_interval_s = heartbeat_s, min_interval_s
        self.console = Console(file=self.stream, force_terminal=self.interactive or None, highlight=False)
        self.phase_seconds: dict[str, float] = {}
        self._stack: list[Task] = []
        self._lock = threading.RLock()
        self._last_line = clock()
        self._bar: _RichProgress | None = None
        self._use_ticker, self._tick_s = ticker, tick_s
        self._stop: threading.Event | None = None

    # ------------------------------------------------------------------ public API
    @contextmanager
    def phase(self, name: str, total: int | None = None, label: str | None = None) -> Iterator[Task]:
        """A named phase of a run (data, rounds, baseline, export, report): a task whose wall time is
        added to ``phase_seconds[name]``, whether or not output is enabled."""
        t0 = self.clock()
        task = self._push(label or name, total, True, headline=True)
        ok = False
        try:
            yield task
            ok = True
        finally:
            self.phase_seconds[name] = self.phase_seconds.get(name, 0.0) + (self.clock() - t0)
            self._pop(task, ok)

    @contextmanager
    def step(self, label: str, total: int | None = None, *, announce: bool = False) -> Iterator[Task]:
        """A task without timing bookkeeping (a sub-step of a phase). Nested tasks are silent in a
        log file (the heartbeat and progress lines show the whole stack) unless ``announce``."""
        task = self._push(label, total, announce, headline=False)
        ok = False
        try:
            yield task
            ok = True
        finally:
            self._pop(task, ok)

    def iter(self, items: Iterable[T], label: str) -> Iterator[T]:
        items = list(items)
        with self.step(label, total=len(items)) as task:
            for item in items:
                yield item
                task.advance()

    def print(self, msg: str) -> None:
        """One line (rich markup allowed; plain text in a log file)."""
        if not self.enabled:
            return
        with self._lock:
            if self.interactive:
                self.console.print(msg)
            else:
                self._write(Text.from_markup(msg).plain)

    def tick(self) -> bool:
        """Write a heartbeat if ``heartbeat_s`` passed since the last line while work is running.
        Returns True when it wrote one. The ticker thread calls this every ``tick_s`` seconds."""
        if not self.enabled or self.interactive:
            return False
        with self._lock:
            if not self._stack:
                return False
            now = self.clock()
            if now - self._last_line < self.heartbeat_s:
                return False
            top = self._stack[-1]
            self._write(f"{' > '.join(t.status() for t in self._stack)}: still working "
                        f"({format_seconds(now - top.started)} in this step)")
            return True

    # ------------------------------------------------------------------ internals
    def _write(self, line: str) -> None:
        self.stream.write(line + "\n")
        self.stream.flush()
        self._last_line = self.clock()

    def _push(self, label: str, total: int | None, announce: bool, *, headline: bool) -> Task:
        with self._lock:
            outermost = not self._stack
            task = Task(self, label, total, self.clock(), announce=announce or outermost, headline=headline or outermost)
            self._stack.append(task)
            if not self.enabled:
                return task
            if self.interactive:
                if self._bar is None:
                    self._bar = _RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                              TimeElapsedColumn(), console=self.console, transient=True)
                    self._bar.start()
                task.rich_id = self._bar.add_task(label, total=total)
            else:
                if task.headline:
                    self._write(f"{label}: started" + (f" (0/{total})" if total is not None else ""))
                if outermost:
                    self._start_ticker()
            return task

    def _advance(self, task: Task, n: int, note: str | None) -> None:
        with self._lock:
            task.done += n
            if note is not None:
                task.detail = note
            if not self.enabled:
                return
            if self.interactive:
                if self._bar is not None and task.rich_id is not None:
                    self._bar.update(task.rich_id, completed=task.done, description=task.status()
                                     if task.detail else task.label)
            elif self.clock() - self._last_line >= self.min_interval_s:
                self._write(f"{' > '.join(t.status() for t in self._stack)}")

    def _pop(self, task: Task, ok: bool) -> None:
        with self._lock:
            if task in self._stack:
                self._stack.remove(task)
            outermost = not self._stack
            if not self.enabled:
                return
            took = format_seconds(self.clock() - task.started)
            finished = task.total is None or task.done >= task.total
            count = f" {task.done}/{task.total}" if task.total is not None else ""
            end = (f"{task.label}:{count} done in {took}" if ok and finished
                   else f"{task.label}: stopped at{count or ' an unfinished step'} after {took}")
            if self.interactive:
                if self._bar is not None and task.rich_id is not None:
                    self._bar.remove_task(task.rich_id)
                if outermost and self._bar is not None:
                    self._bar.stop()
                    self._bar = None
                if task.announce or not (ok and finished):
                    self.console.print(end)
            else:
                if task.announce or not (ok and finished):
                    self._write(end)
                if outermost:
                    self._stop_ticker()

    def _start_ticker(self) -> None:
        if not self._use_ticker or self._stop is not None:
            return
        stop = self._stop = threading.Event()

        def run() -> None:
            while not stop.wait(self._tick_s):
                self.tick()

        threading.Thread(target=run, name="securefed-progress-heartbeat", daemon=True).start()

    def _stop_ticker(self) -> None:
        if self._stop is not None:
            self._stop.set()
            self._stop = None
