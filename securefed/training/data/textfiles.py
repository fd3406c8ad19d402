"""Reading a data folder's files: which files, in what encoding, and one clear error for each one that
cannot be read as it is.

A holder's folder is whatever its institution exported: Windows tools write UTF-16 or UTF-8 with a
byte-order mark (Excel, Notepad, SQL Server), older systems Latin-1 / Windows-1252, and folders hold
scanned PDFs, links into other shares, files only another account may read. Skipping what does not read
as UTF-8 (what this did first) trained quietly on whatever was left — one file of ten, or only the
ASCII-named half — and the run looked fine. So, for training data (``strict``):

* a byte-order mark names the encoding (UTF-8, UTF-16, UTF-32) and is dropped; otherwise UTF-8;
* a file with a text suffix that is not text in that encoding, holds NUL bytes, cannot be read, is not
  valid gzip, or has a name that is not UTF-8 is a DataError naming the file and the fix;
* a symbolic link is refused, file or directory: a link pulls in a file from outside the folder (another
  dataset, the holder's own TLS key) that the folder's owner never put there, and the model may
  memorise it (threat_models/system.md SYS-28); a loop or a dangling link has nothing to read at all;
* files without a suffix (README, copyright) are read when they are UTF-8 text; others (binaries) are
  left out, and the holder is told which.

``strict=False`` (``securefed corpus build`` / ``tokenizer`` from PUBLIC trees such as /usr/share/doc,
which hold a few Latin-1 pages and many links) skips such files instead and says which it skipped.
"""

from __future__ import annotations

import codecs
import gzip
import logging
import os
import zlib
from pathlib import Path

__all__ = ["DataError", "NotText", "TEXT_SUFFIXES", "decode", "encoding_of", "read_text", "say_left_out", "shown",
           "walk_files"]

log = logging.getLogger(__name__)

# Suffixes read as text from directories; ``name.<suffix>.gz`` is read too (installed doc trees
# such as /usr/share/doc keep most files gzipped).
# Files without a suffix (README, copyright, changelog) are read too when they decode as UTF-8.
TEXT_SUFFIXES = frozenset(
    ".txt .md .rst .py .pyi .c .h .cc .cpp .hpp .rs .go .java .js .ts .sh .tex .html .htm .xml "
    ".yaml .yml .toml .cfg .ini .csv .org .adoc .debian".split()
)
# UTF-32 LE (FF FE 00 00) before UTF-16 LE (FF FE): the longer mark first
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_FIX = ("convert it to UTF-8 (e.g. iconv -f WINDOWS-1252 -t UTF-8, or the encoding it was written in) "
        "or move it out of the data folder")


class DataError(ValueError):
    """Local data is missing, empty, unreadable or too small for the requested setup."""


class NotText(DataError):
    """A file that is not text in its encoding (or holds NUL bytes): binary, or another encoding."""


def shown(p: Path | str) -> str:
    """A path for a message: bytes of a name that are not UTF-8 shown as \\xNN, so printing never fails."""
    return os.fsencode(str(p)).decode("utf-8", "backslashreplace")


def encoding_of(head: bytes) -> str:
    """The codec a file's first bytes name by their byte-order mark (which the codec drops), else UTF-8."""
    return next((enc for bom, enc in _BOMS if head.startswith(bom)), "utf-8")


def decode(raw: bytes, where: str) -> str:
    """``raw`` as text (encoding_of); NotText naming ``where`` when it is not text in that encoding."""
    enc = encoding_of(raw[:4])
    name = {"utf-8-sig": "UTF-8", "utf-16": "UTF-16", "utf-32": "UTF-32"}.get(enc, "UTF-8")
    try:
        text = raw.decode(enc)
    except UnicodeDecodeError as e:
        raise NotText(f"{where}: not {name} text (byte 0x{raw[e.start]:02x} at offset {e.start}"
                      + ("; Latin-1 / Windows-1252?)" if enc == "utf-8" else ")") + f"; {_FIX}") from None
    if "\x00" in text:
        raise NotText(f"{where}: holds NUL bytes (a binary file, or UTF-16 without a byte-order mark); {_FIX}")
    return text


def read_text(p: Path) -> str:
    """The text of file ``p`` (gunzipped for ``.gz``); DataError naming it and the fix when it cannot be read."""
    where = shown(p)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise DataError(f"{where}: cannot be read ({e.strerror or e}); give this process read access to it or "
                        "move it out of the data folder") from None
    if p.name.lower().endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:   # gzip.BadGzipFile is an OSError
            raise DataError(f"{where}: not a valid gzip file ({e}); re-compress it or move it out of the data "
                            "folder") from None
    return decode(raw, where)


def _is_text_name(name: str) -> bool:
    name = name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    suffix = Path(name).suffix
    return suffix in TEXT_SUFFIXES or suffix == ""


def _link(p: Path) -> DataError:
    try:
        target = shown(os.readlink(p))
    except OSError:
        target = "?"
    return DataError(f"{shown(p)} is a symbolic link (to {target}): securefed reads only the files inside the data "
                     "folder itself, so a link cannot pull in a file from elsewhere (SYS-28). Copy the file in, "
                     "or name the folder it points into as the data path")


def walk_files(root: Path, *, strict: bool = True) -> tuple[list[Path], list[str]]:
    """(files to read, sorted by relative path; what was left out and why). Hidden entries and __pycache__ are
    not visited. ``strict``: a symbolic link, a non-regular file or a name that is not UTF-8 is a DataError;
    otherwise it is left out (directory links never followed, file links followed as before)."""
    out, left = [], []
    for dirpath, dirnames, filenames in os.walk(root):  # followlinks=False: no cycles, no escapes
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__pycache__")
        for d in list(dirnames):
            if os.path.islink(os.path.join(dirpath, d)):
                if strict:
                    raise _link(Path(dirpath, d))
                left.append(f"{shown(Path(dirpath, d).relative_to(root))} (a directory link)")
                dirnames.remove(d)
        for f in filenames:
            p = Path(dirpath, f)
            if f.startswith(".") or not _is_text_name(f):
                continue
            rel = shown(p.relative_to(root))
            if strict and p.is_symlink():
                raise _link(p)
            if not p.is_file():   # a FIFO (reading would block), a socket, a device, a dangling link or a loop
                if strict:
                    raise DataError(f"{shown(p)} is not a regular file; move it out of the data folder")
                left.append(f"{rel} (not a regular file)")
                continue
            try:
                p.relative_to(root).as_posix().encode("utf-8")
            except UnicodeEncodeError:
                if strict:
                    raise DataError(f"{shown(p)}: its name is not UTF-8 (a document id is its path); rename it, e.g. "
                                    "convmv -f latin1 -t utf-8 --notest -r on the data folder") from None
                left.append(f"{rel} (a name that is not UTF-8)")
                continue
            out.append(p)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix()), left


def say_left_out(root: Path, left: list[str]) -> None:
    """One warning naming (up to 5 of) the files a data folder's reading left out, so none is left out quietly."""
    if left:
        more = f", and {len(left) - 5} more" if len(left) > 5 else ""
        log.warning("%s: %d file(s) not read: %s%s", shown(root), len(left), "; ".join(left[:5]), more)
