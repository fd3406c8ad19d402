"""Progress display for long data steps (rich on stderr); silent when disabled."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")

__all__ = ["Steps"]


class Steps:
    """``with Steps(enabled) as s: with s.step("x"): ...; for b in s.track(it, n, "y"): ...``"""

    def __init__(self, enabled: bool) -> None:
        self.enabled = bool(enabled)
        self.console = Console(stderr=True)

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        t0 = time.perf_counter()
        with self.console.status(f"[bold]data[/]: {name} ..."):
            yield
        self.console.log(f"data: {name} ({time.perf_counter() - t0:.1f} s)")

    def track(self, items: Iterable[T], total: int, name: str) -> Iterator[T]:
        if not self.enabled:
            yield from items
            return
        columns = (TextColumn(f"data: {name}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=self.console, transient=True) as bar:
            task = bar.add_task(name, total=total)
            for item in items:
                yield item
                bar.advance(task)

    def done(self, message: str) -> None:
        if self.enabled:
            self.console.log(message)
