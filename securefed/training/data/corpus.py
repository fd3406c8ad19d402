"""Corpus directories: build one from the stdlib and/or local paths, and measure one.

Layout written by :func:`write_corpus` (read back by ``load_documents`` / ``DataConfig.source``)::

    OUT/
      manifest.json        format, python version, inputs, limits, content hash, per-source stats
      <source>/<path>      one text file per document; the id "<source>/<path>" is kept

The directory is written beside OUT under a temporary name and renamed into place, so an
interrupted build never leaves a half-written corpus.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from transformers import PreTrainedTokenizerFast

from securefed import jsonio
from securefed.outdir import out_problem, replace_dir, uncreatable

from .documents import (
    CORPUS_MANIFEST,
    DataError,
    Document,
    content_hash,
    group_by_source,
    load_documents,
    select_documents,
)
from .stdlib import python_version, stdlib_sources

__all__ = ["collect_sources", "write_corpus", "check_corpus_out", "corpus_stats", "CORPUS_FORMAT"]

CORPUS_FORMAT = "securefed-corpus-v1"


def collect_sources(
    inputs: Sequence[str], *, text_field: str = "text", max_sources: int | None, max_bytes_per_source: int
) -> dict[str, list[Document]]:
    """Documents per source from each input ("stdlib" or a path), limits applied per input."""
    if not inputs:
        raise ValueError("inputs must name at least one source ('stdlib' or a path)")
    out: dict[str, list[Document]] = {}
    owner: dict[str, str] = {}
    for item in inputs:
        if item == "stdlib":
            groups = stdlib_sources(max_sources=max_sources, max_bytes_per_source=max_bytes_per_source)
        else:
            # strict=False: a public tree (/usr/share/doc) holds a few Latin-1 pages and many links; they are
            # skipped with a warning naming them, not refused (a holder's training data is read strictly)
            groups = select_documents(group_by_source(load_documents(item, text_field=text_field, strict=False)),
                                      max_sources=max_sources, max_bytes_per_source=max_bytes_per_source)  # fmt: skip
        for src, docs in groups.items():
            if src in out:
                raise DataError(f"source {src!r} comes from both {owner[src]} and {item}; rename one of them")
            out[src], owner[src] = docs, item
    return out


def _safe_relpath(doc_id: str) -> PurePosixPath:
    rel = PurePosixPath(doc_id)
    if rel.is_absolute() or ".." in rel.parts or len(rel.parts) < 2:
        raise DataError(f"document id {doc_id!r} is not a safe relative path")
    return rel


def _is_earlier_corpus(d: Path) -> bool:
    """``d`` holds this command's own manifest (format CORPUS_FORMAT) and, beside it, only the source folders that
    manifest names: provably a corpus that `securefed corpus build` wrote."""
    m = d / CORPUS_MANIFEST
    if m.is_symlink() or not m.is_file():
        return False
    try:
        manifest = jsonio.loads(m.read_text(encoding="utf-8"), legacy=True)
    except (OSError, ValueError):
        return False
    if not isinstance(manifest, dict) or manifest.get("format") != CORPUS_FORMAT \
            or not isinstance(manifest.get("sources"), dict):
        return False
    own = {PurePosixPath(s).parts[0] for s in manifest["sources"] if PurePosixPath(s).parts}
    return all(e.name == CORPUS_MANIFEST or (e.name in own and e.is_dir() and not e.is_symlink()) for e in d.iterdir())


def check_corpus_out(out: str | Path, *, overwrite: bool = False) -> None:
    """Refuse (FileExistsError, one line) an OUT the build would lose files in: a file, a symbolic link, or a
    non-empty directory — which ``overwrite`` replaces only when it is an earlier corpus (its own manifest.json and
    source folders, nothing else)."""
    out = Path(out).expanduser()
    why = uncreatable(out)
    if why:
        raise FileExistsError(f"{out} cannot be created: {why}; choose another directory")
    why = out_problem(out, lambda d: False)     # every non-empty directory is in the way, unless overwrite
    if why == "symlink":
        raise FileExistsError(f"{out} is a symbolic link; name a real directory")
    if why == "file":
        raise FileExistsError(f"{out} is a file, not a directory; choose a new directory")
    if why is None:
        return
    if not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose a new directory or pass --overwrite "
                              "(which replaces only an earlier corpus)")
    if not _is_earlier_corpus(out):
        raise FileExistsError(f"{out} is not a corpus written by `securefed corpus build` (no {CORPUS_FORMAT} "
                              f"{CORPUS_MANIFEST}, or files its manifest does not name); --overwrite replaces only an "
                              "earlier corpus: choose a new or empty directory")


def write_corpus(
    groups: dict[str, list[Document]], out: str | Path, *, inputs: Sequence[str], limits: dict,
    overwrite: bool = False,
) -> dict:
    """Write ``groups`` as a corpus directory at ``out``; returns its manifest. ``out`` must be new or empty, or
    (``overwrite``) an earlier corpus, which is replaced as a whole (check_corpus_out)."""
    out = Path(out).expanduser()
    check_corpus_out(out, overwrite=overwrite)
    docs = [d for ds in groups.values() for d in ds]
    manifest = {
        "format": CORPUS_FORMAT,
        "python_version": python_version(),
        "inputs": list(inputs),
        "limits": limits,
        "content_hash": content_hash(docs),
        "documents": len(docs),
        "bytes": sum(d.n_bytes for d in docs),
        "sources": {s: {"documents": len(ds), "bytes": sum(d.n_bytes for d in ds)} for s, ds in groups.items()},
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        for d in docs:
            target = tmp.joinpath(*_safe_relpath(d.doc_id).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(d.text.encode("utf-8"))  # bytes: no newline translation
        (tmp / CORPUS_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        replace_dir(tmp, out)   # new and empty, or an earlier corpus (checked above)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


def corpus_stats(
    path: str | Path, *, tokenizer: PreTrainedTokenizerFast | None = None, text_field: str = "text"
) -> tuple[list[dict], dict | None]:
    """Per-source rows (source, documents, bytes, tokens) of the data at ``path``, and the
    corpus manifest when there is one (with ``content_hash_ok`` set by re-hashing the documents)."""
    docs = load_documents(path, text_field=text_field)
    rows = []
    for src, ds in group_by_source(docs).items():
        row = {"source": src, "documents": len(ds), "bytes": sum(d.n_bytes for d in ds)}
        if tokenizer is not None:
            encs = tokenizer.backend_tokenizer.encode_batch([d.text for d in ds], add_special_tokens=False)
            row["tokens"] = sum(len(e.ids) for e in encs)
        rows.append(row)
    manifest = None
    p = Path(path).expanduser()
    if p.is_dir() and (p / CORPUS_MANIFEST).is_file():
        try:
            manifest = jsonio.loads((p / CORPUS_MANIFEST).read_text(encoding="utf-8"), legacy=True)
        except ValueError as e:   # not UTF-8, not JSON, nested too deeply, a duplicate key
            raise DataError(f"{p / CORPUS_MANIFEST} is not valid JSON: {e}") from None
        if not isinstance(manifest, dict):
            raise DataError(f"{p / CORPUS_MANIFEST} does not hold a JSON object (got {type(manifest).__name__})")
        manifest["content_hash_ok"] = manifest.get("content_hash") == content_hash(docs)
    return rows, manifest
