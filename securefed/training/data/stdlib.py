"""The default corpus: the Python standard library's own source files, found offline on every machine.

Holders' corpus ("stdlib" source): one *source* per top-level stdlib **package** (a directory such as
``asyncio``, ``email``, ``xml``), so sources genuinely differ in vocabulary and style: the non-IID
case of the paper's Pile experiment in miniature. Test subpackages (``test``, ``tests``,
``idle_test``) and the top-level ``test`` tree are left out.

Tokenizer corpus (public, disjoint from every holder): the stdlib's top-level **single-file
modules** (``Lib/*.py``: ``argparse.py``, ``typing.py``, ...). These are always installed (unlike
``Lib/test``, which distributions often split into a separate package), and no holder ever reads
them, so the shared tokenizer never learns strings from a holder's data.

Determinism: files are sorted by path, sources follow a fixed preference order, so the same Python
version yields the same documents, order and split on every machine; the manifest records the
Python version and a content hash so a mismatch is visible.
"""

from __future__ import annotations

import platform
import sysconfig
from pathlib import Path

from .documents import DataError, Document
from .textfiles import read_text

__all__ = [
    "PREFERRED_SOURCES",
    "stdlib_dir",
    "stdlib_sources",
    "tokenizer_corpus",
    "python_version",
    "stdlib_sizes",
]


def _read_text(p: Path) -> str | None:
    """A public stdlib file's text, or None: a file that is not text is simply not part of the public corpus."""
    try:
        return read_text(p)
    except DataError:
        return None


# Large, topically distinct packages first (in every CPython 3.10-3.13); the rest follow by name.
PREFERRED_SOURCES = (
    "asyncio", "email", "xml", "multiprocessing", "unittest", "http", "importlib", "logging",
    "urllib", "json", "concurrent", "html", "xmlrpc", "wsgiref", "collections", "ctypes",
    "sqlite3", "curses", "dbm", "zoneinfo", "tomllib", "venv", "re", "encodings",
)  # fmt: skip
_SKIP_PACKAGES = frozenset({"test", "site-packages", "dist-packages", "__phello__", "__pycache__"})
_SKIP_SUBDIRS = frozenset({"test", "tests", "idle_test", "__pycache__"})


def stdlib_dir() -> Path:
    p = Path(sysconfig.get_paths()["stdlib"])
    if not p.is_dir():
        raise DataError(f"the Python standard library directory {p} does not exist")
    return p


def python_version() -> str:
    return f"{platform.python_implementation()} {platform.python_version()}"


def _package_files(pkg: Path) -> list[Path]:
    files = []
    for p in pkg.rglob("*.py"):
        rel = p.relative_to(pkg).parts
        if any(part in _SKIP_SUBDIRS or part.startswith(".") for part in rel[:-1]):
            continue
        files.append(p)
    return sorted(files, key=lambda p: p.relative_to(pkg).as_posix())


def _packages(lib: Path) -> list[str]:
    names = sorted(
        d.name
        for d in lib.iterdir()
        if d.is_dir() and d.name not in _SKIP_PACKAGES and (d / "__init__.py").is_file()
    )
    preferred = [n for n in PREFERRED_SOURCES if n in names]
    return preferred + [n for n in names if n not in preferred]


def stdlib_sources(
    *, max_sources: int | None = None, max_bytes_per_source: int | None = None
) -> dict[str, list[Document]]:
    """Documents of the stdlib packages, per source, in the fixed source order.

    Reading stops early once a source has ``max_bytes_per_source`` bytes and once ``max_sources``
    non-empty sources are collected (the same selection rule as
    :func:`~securefed.training.data.documents.select_documents`, applied while reading so that the
    default setup reads ~3 MB, not the whole library).
    """
    lib = stdlib_dir()
    out: dict[str, list[Document]] = {}
    for name in _packages(lib):
        if max_sources is not None and len(out) >= max_sources:
            break
        pkg, docs, used = lib / name, [], 0
        for p in _package_files(pkg):
            if max_bytes_per_source is not None and used + p.stat().st_size > max_bytes_per_source:
                continue  # st_size == UTF-8 bytes of the text we would read
            text = _read_text(p)
            if text is None or not text.strip():
                continue
            docs.append(Document(f"{name}/{p.relative_to(pkg).as_posix()}", name, text))
            used += docs[-1].n_bytes
        if docs:
            out[name] = docs
    if not out:
        raise DataError(f"no readable standard library packages under {lib}")
    return out


def stdlib_sizes() -> dict[str, tuple[int, int]]:
    """(files, bytes) of every stdlib package a holder could read, in source order (stat only): what
    the demo's caps leave out is measured against this."""
    lib = stdlib_dir()
    out = {}
    for name in _packages(lib):
        files = _package_files(lib / name)
        out[name] = (len(files), sum(p.stat().st_size for p in files))
    return out


def tokenizer_corpus(max_bytes: int = 8_000_000) -> list[Document]:
    """The public tokenizer-training corpus: stdlib single-file modules (``Lib/*.py``), sorted."""
    lib = stdlib_dir()
    docs, used = [], 0
    for p in sorted(lib.glob("*.py"), key=lambda p: p.name):
        if p.name.startswith("_sysconfigdata"):
            continue  # this machine's build settings (paths, compiler flags): not portable text
        text = _read_text(p)
        if text is None or not text.strip():
            continue
        b = len(text.encode("utf-8"))
        if used + b > max_bytes:
            continue
        docs.append(Document(f"stdlib-modules/{p.name}", "stdlib-modules", text))
        used += b
    if not docs:
        raise DataError(f"no single-file modules under {lib} to train the public tokenizer on")
    return docs
