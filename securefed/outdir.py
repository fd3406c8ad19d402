"""What stands at an output path a command writes as a whole (one place for `report --out`, `audit --out` and
`corpus build`): a command replaces only what it provably wrote itself, never a user's files."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

__all__ = ["out_problem", "uncreatable", "os_error_text", "replace_dir"]


def out_problem(path: str | Path, is_own: Callable[[Path], bool]) -> str | None:
    """None if ``path`` may be written as a whole: absent, an empty folder, or a folder ``is_own`` recognises as this
    command's earlier output. Otherwise what is in the way, for the caller's one-line error: ``"symlink"``, ``"file"``,
    or ``"holds a, b, c, ..."`` (a non-empty folder that is not the command's own; its first names)."""
    p = Path(path)
    if p.is_symlink():
        return "symlink"
    if not p.exists():
        return None
    if not p.is_dir():
        return "file"
    names = sorted(e.name for e in p.iterdir())
    if not names or is_own(p):
        return None
    return "holds " + ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def uncreatable(path: str | Path) -> str | None:
    """Why no folder can be made at the absent ``path`` — its nearest existing ancestor is a file, or this user cannot
    write there — for the caller's one-line refusal before any work; None when it exists or can be made. (An output
    path under a file was a NotADirectoryError traceback from `simulate`, `report --out`, `audit --out` and `corpus
    tokenizer`, some after minutes of work.)"""
    p = Path(path).expanduser().absolute()
    if p.exists() or p.is_symlink():
        return None
    up = next((a for a in p.parents if a.exists()), None)
    if up is None:
        return None
    if not up.is_dir():
        return f"{up} is a file, not a folder"
    if not os.access(up, os.W_OK | os.X_OK):
        return f"{up} is not writable by this user"
    return None


def os_error_text(e: OSError) -> str:
    """An OSError in one line, "PATH: reason" (Python's own "[Errno 28] No space left on device: 'PATH'" reads as a
    crash), or its message where it names no file."""
    if e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def replace_dir(tmp: Path, final: Path) -> None:
    """Rename the folder ``tmp`` (built aside, beside ``final``) to ``final``. An earlier ``final`` — one
    :func:`out_problem` let through — is first moved to a fresh hidden name beside it and removed only once the new
    one is in place (a fixed ``.NAME.old`` would delete whatever a user kept under that name)."""
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}.old-", dir=final.parent))
        os.replace(final, old)   # a directory renamed onto an empty directory replaces it (POSIX)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)
