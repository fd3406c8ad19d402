"""Progress of the data steps, as plain "data: ..." lines (no logger source tags) or rich bars.

A thin adapter over :class:`securefed.progress.Progress`: given a ``Progress`` (the run's), the data
steps appear in the run's one display and heartbeat; given a bool, it makes its own on stderr.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from securefed.progress import Progress

T = TypeVar("T")

__all__ = ["Steps"]


class Steps:
    """``with Steps(progress) as s: with s.step("x"): ...; for b in s.track(it, n, "y"): ...; s.done(msg)``"""

    def __init__(self, progress: bool | Progress) -> None:
        self.progress = progress if isinstance(progress, Progress) else Progress(enabled=bool(progress))
        self.enabled = self.progress.enabled

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        with self.progress.step(f"data: {name}", announce=True):
            yield

    def track(self, items: Iterable[T], total: int, name: str) -> Iterator[T]:
        with self.progress.step(f"data: {name}", total=total, announce=True) as task:
            for item in items:
                yield item
                task.advance()

    def done(self, message: str) -> None:
        self.progress.print(message)
