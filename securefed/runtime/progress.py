"""Progress of a run's phases (data, rounds, baseline, export, report): see securefed/progress.py.

The implementation sits in layer 0 so that the data pipeline (training layer) shares it; the runtime
imports it from here. ``Progress(enabled=...)``, ``.iter(items, label)``, ``.print(msg)``,
``.phase(name, total=None)`` -> task with ``advance()``, ``.phase_seconds``.
"""

from securefed.progress import Progress, Task, format_seconds

__all__ = ["Progress", "Task", "format_seconds"]
