"""Progress bars (rich) for long work; silent when disabled (tests, --quiet).

One rich live display serves nested loops (rounds > holders): inner loops add a task to it.
"""

from __future__ import annotations

from typing import Iterable, Iterator, TypeVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress as _RichProgress, TextColumn, TimeElapsedColumn

T = TypeVar("T")


class Progress:
    def __init__(self, *, enabled: bool = True) -> None:
        self.enabled = enabled
        self.console = Console(stderr=True)
        self._bar: _RichProgress | None = None

    def iter(self, items: Iterable[T], label: str) -> Iterator[T]:
        items = list(items)
        if not self.enabled:
            yield from items
            return
        owner = self._bar is None
        if owner:
            self._bar = _RichProgress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=self.console, transient=True)
            self._bar.start()
        bar = self._bar
        task = bar.add_task(label, total=len(items))
        try:
            for item in items:
                yield item
                bar.advance(task)
        finally:
            bar.remove_task(task)
            if owner:
                bar.stop()
                self._bar = None

    def print(self, msg: str) -> None:
        if self.enabled:
            self.console.print(msg)
