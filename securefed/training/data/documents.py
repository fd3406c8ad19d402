"""Documents and the local sources they come from.

A data holder points at its own local data; three layouts are read:

* a directory of text files (recursive). Each top-level subdirectory is one *source*; files lying
  directly in the directory form a source named after the directory itself.
* a JSONL file, one JSON object per line with a text field (name configurable) and optionally a
  ``"source"`` field (default source: the file's stem).
* a Parquet file with a text column and optionally a ``"source"`` column.

Every document gets a stable id ``"<source>/<relative path>"`` that is also a safe relative file
path, so a corpus written out by ``securefed corpus build`` and read back yields the same ids, and
hence the same hash-based evaluation split. Bad input raises :class:`DataError` (a ``ValueError``)
with one message naming the path and the problem.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import unicodedata
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from securefed import jsonio

from .textfiles import TEXT_SUFFIXES, DataError, NotText, encoding_of, read_text, say_left_out, shown, walk_files

__all__ = [
    "DataError",
    "Document",
    "TEXT_SUFFIXES",
    "load_documents",
    "group_by_source",
    "select_documents",
    "content_hash",
    "safe_name",
    "CORPUS_MANIFEST",
]

# which files of a directory are read, in what encoding, and what is refused: textfiles.py
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".ndjson")   # record files (one document per record), read by name
PARQUET_SUFFIXES = (".parquet", ".pq")
CORPUS_MANIFEST = "manifest.json"  # written by `securefed corpus build`; fixes the source order
_UNSAFE = re.compile(r"[^\w.+-]+")   # \w: letters and digits of any script (循環器, Ärzte stay themselves)


@dataclass(frozen=True)
class Document:
    doc_id: str  # "<source>/<relative path>", a safe relative path; unique within a corpus
    source: str
    text: str
    # the value of data.unit_field (JSONL / Parquet), e.g. a patient id: the documents of one group are one
    # record under train.dp_sgd.unit=group (protocols/dp.md §10.2); None when no unit_field is read
    group: str | None = None

    @property
    def n_bytes(self) -> int:
        return len(self.text.encode("utf-8"))


def safe_name(name: str) -> str:
    """A name usable as one path component (sources become directory names): letters and digits of any
    script, ``._+-``; anything else (spaces, slashes, bytes that are not UTF-8) becomes ``_``."""
    cleaned = _UNSAFE.sub("_", unicodedata.normalize("NFC", name)).strip("._")
    return cleaned or "source"


def _load_directory(root: Path, strict: bool = True) -> tuple[list[Document], int]:
    files, left = walk_files(root, strict=strict)
    if not files:
        # a folder of .jsonl / .parquet files is not read as one: say so, not "empty"
        records = sorted(p.name for p in root.rglob("*")
                         if p.is_file() and p.name.lower().endswith(JSONL_SUFFIXES + PARQUET_SUFFIXES))
        if records:
            raise DataError(
                f"data directory {root} holds {len(records)} JSONL/Parquet file(s) ({', '.join(records[:3])}"
                f"{', …' if len(records) > 3 else ''}) and no text files: a directory is read as text files (suffixes "
                f"{' '.join(sorted(TEXT_SUFFIXES))}, none, or those + .gz); name a .jsonl or .parquet file itself as "
                "the data path (join several into one first)"
            )
        raise DataError(
            f"data directory {root} is empty: no text files under it (suffixes "
            f"{' '.join(sorted(TEXT_SUFFIXES))}, none, or those + .gz)"
        )
    docs, skipped = [], 0
    seen: dict[str, Path] = {}      # document id -> the file it came from
    named: dict[str, str] = {}      # source -> the folder (or root) name it came from
    for p in files:
        rel = p.relative_to(root)
        if rel.as_posix() == CORPUS_MANIFEST:
            continue
        try:
            text = read_text(p)
        except NotText:
            if strict and Path(p.name.lower().removesuffix(".gz")).suffix:  # a text suffix: it claims to be text
                raise
            left.append(f"{shown(rel)} (not text)")   # no suffix (a binary beside README, copyright): documented
            continue
        except DataError:
            if strict:
                raise
            left.append(f"{shown(rel)} (unreadable)")
            continue
        if not text.strip():
            skipped += 1
            continue
        top = root.resolve().name if len(rel.parts) == 1 else rel.parts[0]
        source = safe_name(top)
        inner = rel.as_posix() if len(rel.parts) == 1 else Path(*rel.parts[1:]).as_posix()
        if named.setdefault(source, top) != top:   # "Herz Notes" and "Herz_Notes", or two names of another script
            raise DataError(f"{shown(root)}: the folders {named[source]!r} and {top!r} both become source {source!r} "
                            "(a source name keeps letters, digits and ._+-); rename one of them")
        if inner.lower().endswith(".gz"):
            inner = inner[:-3]  # the id names the text, which is what a written corpus stores
        doc_id = f"{source}/{inner}"
        if doc_id in seen:
            if rel.as_posix().removesuffix(".gz") == seen[doc_id].relative_to(root).as_posix().removesuffix(".gz"):
                skipped += 1   # both NEWS and NEWS.gz: one text twice; keep the first (sorted) one
                continue
            raise DataError(f"{shown(seen[doc_id])} and {shown(p)} both become document {doc_id!r}; rename one of them")
        seen[doc_id] = p
        docs.append(Document(doc_id, source, text))
    say_left_out(root, left)
    return docs, skipped


def _manifest_order(root: Path) -> list[str]:
    """Source order recorded by ``securefed corpus build`` (empty when there is no manifest)."""
    try:
        data = jsonio.loads((root / CORPUS_MANIFEST).read_text(encoding="utf-8"), legacy=True)
        sources = data["sources"] if isinstance(data, dict) else None
    except (OSError, ValueError, KeyError):   # ValueError: not UTF-8, not JSON, nested too deeply (jsonio.loads)
        return []
    return [s for s in sources if isinstance(s, str)] if isinstance(sources, (list, dict)) else []


def _record(source: object, default: str, stem: str, n: int, text: str, group: str | None = None, *,
            named: dict[str, str], where: str) -> Document:
    """One JSONL/Parquet record. ``source`` (its ``source`` field, or null): a string names the record's source;
    anything else was ignored quietly (the file's default used instead), and two names that become one source
    name ("A B" and "A_B") were merged quietly — both are now a DataError naming the record (``named``: source ->
    the value it came from, for the whole file)."""
    if source is not None and not isinstance(source, str):
        raise DataError(f"{where}: field 'source' is {_kind(source)}, not a string; write the source's name as a "
                        "JSON string (or leave the field out: the file's name is the source)")
    src = safe_name(source) if source else default
    if source and named.setdefault(src, source) != source:
        raise DataError(f"{where}: source {source!r} and source {named[src]!r} both become source {src!r} (a source "
                        "name keeps letters, digits and ._+-); write one name for one source")
    return Document(f"{src}/{stem}-{n:07d}.txt", src, text, group)


def _kind(v: object) -> str:
    """What a refused id is, without its value: an id is the holder's data (a patient's), never echoed to a log."""
    if isinstance(v, str) or v is None:
        return "an empty string" if isinstance(v, str) else "null"
    name = type(v).__name__
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"   # "an int", "a list"


def _group_value(v: object, where: str, unit_field: str) -> str:
    """A unit_field value as the group key: a non-empty string or an integer (bool, float, null refused). Strings
    are NFC-normalised and stripped, so one person's id written two ways stays one group (merging is the safe
    direction: a group only ever gets larger)."""
    if isinstance(v, str) and v.strip():
        return unicodedata.normalize("NFC", v.strip())
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    raise DataError(f"{where}: unit field {unit_field!r} must be a non-empty string or an integer, got {_kind(v)}; every "
                    "record needs the id of whom it is about (train.dp_sgd.unit=group protects each id's records together)")


def _jsonl_lines(path: Path) -> Iterator[tuple[int, str]]:
    """(line number, line) of a JSONL file: UTF-8, or the UTF-8/16/32 its byte-order mark names; DataError naming
    the file, the line and the fix for bytes that are not text in that encoding or a gzip file that is not valid."""
    where = shown(path)
    try:
        with (gzip.open if path.name.lower().endswith(".gz") else open)(path, "rb") as raw:
            enc = encoding_of(raw.read(4))
            raw.seek(0)
            if enc in ("utf-8", "utf-8-sig"):   # line by line from the bytes: an error names its exact line
                for lineno, b in enumerate(raw, start=1):
                    try:
                        yield lineno, b.decode("utf-8-sig" if lineno == 1 else "utf-8")
                    except UnicodeDecodeError as e:
                        raise DataError(f"{where}, line {lineno}: not UTF-8 (byte 0x{b[e.start]:02x}; Latin-1 / "
                                        "Windows-1252?); convert the file to UTF-8 (e.g. iconv -f WINDOWS-1252 -t "
                                        "UTF-8)") from None
            else:
                lineno = 0
                try:
                    for lineno, line in enumerate(io.TextIOWrapper(raw, encoding=enc), start=1):
                        yield lineno, line
                except UnicodeDecodeError:
                    raise DataError(f"{where}, after line {lineno}: not {enc.upper()} text although the file starts "
                                    "with its byte-order mark; convert the file to UTF-8") from None
    except OSError as e:   # unreadable, or gzip.BadGzipFile
        raise DataError(f"{where}: cannot be read ({e.strerror or e})") from None
    except (EOFError, zlib.error) as e:
        raise DataError(f"{where}: not a valid gzip file, or one cut short ({e}); re-compress it") from None


def _load_jsonl(path: Path, text_field: str, unit_field: str | None = None) -> tuple[list[Document], int]:
    docs, skipped, default, stem = [], 0, safe_name(path.stem), safe_name(path.stem)
    named: dict[str, str] = {}
    for lineno, line in _jsonl_lines(path):
        if not line.strip():
            continue
        try:
            obj = jsonio.loads(line, legacy=True)   # legacy: a bare NaN in a record stays readable, as before
        except ValueError as e:   # json.JSONDecodeError; nested too deeply or a duplicate key (jsonio.loads)
            raise DataError(f"{path}, line {lineno}: not valid JSON ({getattr(e, 'msg', e)})") from None
        if not isinstance(obj, dict) or text_field not in obj:
            keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
            raise DataError(
                f"{path}, line {lineno}: no text field {text_field!r} (found {keys}); "
                "set text_field to the field holding the document text"
            )
        text, source = obj[text_field], obj.get("source")
        if text is not None and not isinstance(text, str):   # a list of paragraphs, a number: never skipped
            raise DataError(f"{path}, line {lineno}: text field {text_field!r} is {_kind(text)}, not a string; "
                            "write each record's text as one JSON string (null or \"\" for a record without text)")
        if text is None or not text.strip():
            skipped += 1
            continue
        group = None
        if unit_field is not None:
            if unit_field not in obj:
                raise DataError(f"{path}, line {lineno}: no unit field {unit_field!r} (found {sorted(obj)}); every "
                                "record needs it when data.unit_field is set")
            group = _group_value(obj[unit_field], f"{path}, line {lineno}", unit_field)
        docs.append(_record(source, default, stem, lineno, text, group, named=named, where=f"{path}, line {lineno}"))
    return docs, skipped


def _is_string_type(t) -> bool:
    """A Parquet/Arrow column type whose values read as str (or are all null)."""
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    return (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)
            or getattr(pa.types, "is_string_view", lambda _: False)(t))


def _load_parquet(path: Path, text_field: str, unit_field: str | None = None) -> tuple[list[Document], int]:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises several types for a corrupt file
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    if text_field not in schema.names:
        raise DataError(
            f"{path}: no text column {text_field!r} (columns: {schema.names}); "
            "set text_field to the column holding the document text"
        )
    if unit_field is not None and unit_field not in schema.names:
        raise DataError(f"{path}: no unit column {unit_field!r} (columns: {schema.names}); it is needed when "
                        "data.unit_field is set")
    if not _is_string_type(schema.field(text_field).type):   # ints, bytes, lists: never skipped row by row
        raise DataError(f"{path}: text column {text_field!r} holds {schema.field(text_field).type}, not strings; write it "
                        "as a string (UTF-8) column (bytes decoded, a list of paragraphs joined)")
    columns = [text_field] + (["source"] if "source" in schema.names else [])
    columns += [unit_field] if unit_field is not None and unit_field not in columns else []
    try:
        table = pq.read_table(path, columns=columns)
    except Exception as e:  # a readable footer over a damaged body
        raise DataError(f"{path}: not a readable Parquet file ({e})") from None
    texts = table.column(text_field).to_pylist()
    sources = table.column("source").to_pylist() if "source" in columns else [None] * len(texts)
    groups = table.column(unit_field).to_pylist() if unit_field is not None else [None] * len(texts)
    docs, skipped, default = [], 0, safe_name(path.stem)
    named: dict[str, str] = {}
    for row, (text, source, g) in enumerate(zip(texts, sources, groups, strict=True)):
        if not isinstance(text, str) or not text.strip():
            skipped += 1
            continue
        group = _group_value(g, f"{path}, row {row}", unit_field) if unit_field is not None else None
        docs.append(_record(source, default, default, row, text, group, named=named, where=f"{path}, row {row}"))
    return docs, skipped


def load_documents(path: str | os.PathLike, *, text_field: str = "text", unit_field: str | None = None,
                   strict: bool = True) -> list[Document]:
    """All readable documents at ``path`` (directory, ``.jsonl[.gz]`` or ``.parquet``), in a
    deterministic order: sorted by id, except that a corpus directory's manifest.json fixes the
    order of its sources (so a written stdlib corpus reads back exactly as it was built).
    ``unit_field``: a JSONL field / Parquet column every record must carry (Document.group).
    ``strict`` (training data): a directory's file that cannot be read as text is a DataError naming it;
    False (public trees for ``securefed corpus``): it is skipped, with a warning naming it (textfiles.py)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"data path {p} does not exist")
    name = p.name.lower()
    if p.is_dir():
        if unit_field is not None:
            raise DataError(f"data path {p} is a directory: data.unit_field ({unit_field!r}) is read from JSONL or "
                            "Parquet records; a directory's files have no such field")
        docs, skipped = _load_directory(p, strict)
    elif name.endswith(JSONL_SUFFIXES):
        docs, skipped = _load_jsonl(p, text_field, unit_field)
    elif name.endswith(PARQUET_SUFFIXES):
        docs, skipped = _load_parquet(p, text_field, unit_field)
    else:
        raise DataError(f"data path {p}: expected a directory, a .jsonl or a .parquet file")
    if not docs:
        raise DataError(f"no readable documents in {p} ({skipped} empty or null entries skipped)")
    ids = [d.doc_id for d in docs]
    if len(set(ids)) != len(ids):
        raise DataError(f"{p}: duplicate document ids (two records map to the same source/file name)")
    rank = {s: i for i, s in enumerate(_manifest_order(p))} if p.is_dir() else {}
    return sorted(docs, key=lambda d: (rank.get(d.source, len(rank)), d.doc_id))


def group_by_source(docs: Iterable[Document]) -> dict[str, list[Document]]:
    """Documents per source, sources in first-seen order, documents in their given order."""
    groups: dict[str, list[Document]] = {}
    for d in docs:
        groups.setdefault(d.source, []).append(d)
    return groups


def select_documents(
    groups: dict[str, list[Document]],
    *,
    max_sources: int | None,
    max_bytes_per_source: int | None,
) -> dict[str, list[Document]]:
    """Cap every source at ``max_bytes_per_source`` UTF-8 bytes (None: no cap), taking documents in
    order while they fit (one that does not fit is skipped; later, smaller ones may still fit), then
    keep the first ``max_sources`` sources that are not empty. Whole documents only: the eval split is
    by document."""
    out: dict[str, list[Document]] = {}
    for source, docs in groups.items():
        if max_sources is not None and len(out) >= max_sources:
            break
        chosen, used = [], 0
        for d in docs:
            if max_bytes_per_source is None or used + d.n_bytes <= max_bytes_per_source:
                chosen.append(d)
                used += d.n_bytes
        if chosen:
            out[source] = chosen
    return out


def content_hash(docs: Sequence[Document]) -> str:
    """SHA-256 over (source, id, text[, group]) of every document, in order: identifies a corpus."""
    h = hashlib.sha256(b"securefed-corpus-v1\x00")
    for d in docs:
        # a document's group joins the hash only when there is one: corpora without unit_field hash as before
        for part in (d.source, d.doc_id, d.text) + (() if d.group is None else ("\x00group", d.group)):
            b = part.encode("utf-8")
            h.update(len(b).to_bytes(8, "little") + b)
    return h.hexdigest()
