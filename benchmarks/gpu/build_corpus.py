"""Build the offline, multi-source GPU corpus (>= 200M tokens) and its public tokenizer (issue 14).

Sources (one per *origin*, naturally non-IID):
  * every top-level package of a Python environment's site-packages: its .py/.pyi sources, C/C++/CUDA
    headers and sources, .md/.rst/.txt docs (``pypkg-<name>``; packages under 1 MB pooled into
    ``pypkg-small``). On the H200 machines that is ~100 packages (transformers, torch, sympy, scipy, …).
  * a subset of Debian's ``linux-source-6.1`` by subsystem (``linux-fs``, ``linux-net``, ``linux-docs``,
    …), packed here into one .tar.xz small enough for the device's 64 MiB trip (``pack-linux``).

Files are read as UTF-8 (others, and files with NUL bytes, are skipped), exact duplicates across the
whole corpus are dropped (vendored copies), and each source's files, in path order, are joined into
documents of about ``--doc-bytes`` (a file larger than that is cut at line ends into <= 1 MB pieces),
so that tokenization batches are balanced and the held-out split (by document) takes whole chunks.
The corpus is written with securefed's own ``write_corpus`` (manifest.json with the SHA-256 content
hash that every result records).

The tokenizer (byte-level BPE, vocab 32768) is trained on PUBLIC text that no holder holds: the
interpreter's own standard library (``sysconfig`` stdlib, not site-packages, no test suites; first
24 MB in path order) plus /usr/include's headers (first 8 MB), after dropping every file whose exact
content also occurs in the corpus.

    # here (once; needs apt's linux-source-6.1 unpacked):
    python benchmarks/gpu/build_corpus.py pack-linux /tmp/ksrc/linux-source-6.1 .cache/gpu-text/linux-subset.tar.xz
    # on the GPU machine (~2-3 minutes with 16 cores):
    python3 benchmarks/gpu/build_corpus.py build /tmp/sf/corpus --linux .cache/gpu-text/linux-subset.tar.xz
    # -> /tmp/sf/corpus/pile (corpus dir + manifest.json), /tmp/sf/corpus/tokenizer, /tmp/sf/corpus/build.json,
    #    /tmp/sf/corpus/public (the tokenizer's public text as a corpus of one source: a public initial model's)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import time
from pathlib import Path

# linux-source-6.1 subset: source name -> path prefixes (inside linux-source-6.1/). ~260 MB of text,
# ~40 MB as .tar.xz. drivers/gpu is left out on purpose: it is mostly generated AMD register headers.
LINUX_SOURCES: dict[str, tuple[str, ...]] = {
    "linux-docs": ("Documentation/",),
    "linux-fs": ("fs/",),
    "linux-net": ("net/",),
    "linux-include": ("include/",),
    "linux-core": ("kernel/", "mm/", "lib/", "block/", "crypto/", "security/", "ipc/", "init/", "io_uring/", "virt/"),
    "linux-arch": ("arch/x86/", "arch/arm64/"),
    "linux-drivers-net": ("drivers/net/ethernet/intel/", "drivers/net/ethernet/mellanox/", "drivers/net/wireless/intel/",
                          "drivers/net/phy/", "drivers/net/can/", "drivers/net/usb/"),
    "linux-drivers-misc": ("drivers/usb/", "drivers/tty/", "drivers/input/", "drivers/hid/", "drivers/i2c/",
                           "drivers/spi/", "drivers/md/", "drivers/mmc/", "drivers/gpu/drm/i915/"),
}
LINUX_SUFFIXES = (".c", ".h", ".rst", ".txt")
CODE_SUFFIXES = (".py", ".pyi", ".c", ".h", ".cc", ".cpp", ".hpp", ".cu", ".cuh", ".md", ".rst", ".txt")
SKIP_DIRS = {"__pycache__", ".git", "tests_data"}
MAX_FILE_BYTES = 4_000_000          # larger files are data dumps, not text to learn from
PUBLIC_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "ensurepip"}
PIECE_BYTES = 1_000_000             # a file longer than a document is cut into pieces of at most this


def linux_source_of(rel: str) -> str | None:
    if not rel.endswith(LINUX_SUFFIXES):
        return None
    for name, prefixes in LINUX_SOURCES.items():
        if rel.startswith(prefixes):
            return name
    return None


def pack_linux(src: Path, out: Path) -> None:
    files = []
    for root, dirs, names in os.walk(src):
        dirs.sort()
        for n in sorted(names):
            rel = Path(root, n).relative_to(src).as_posix()
            if linux_source_of(rel):
                files.append(rel)
    out.parent.mkdir(parents=True, exist_ok=True)
    listing = out.with_suffix(".list")
    listing.write_text("\n".join(files) + "\n")
    with open(out, "wb") as fh:
        tar = subprocess.Popen(["tar", "-C", str(src), "-cf", "-", "-T", str(listing)], stdout=subprocess.PIPE)
        subprocess.run(["xz", "-9", "-T0"], stdin=tar.stdout, stdout=fh, check=True)
        tar.wait()
    listing.unlink()
    print(f"{out}: {len(files)} files, {out.stat().st_size / 2**20:.1f} MiB")


def _text(raw: bytes) -> str | None:
    if len(raw) > MAX_FILE_BYTES or b"\x00" in raw:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if text.strip() else None


def site_package_files(site: Path):
    """(source, relpath, text) for every text file of every top-level package in ``site``."""
    for top in sorted(site.iterdir()):
        name = top.name
        if name.endswith((".dist-info", ".egg-info", ".pth")) or name.startswith(("_", ".")) or name in SKIP_DIRS:
            continue
        if top.is_file():
            if name.endswith(".py"):
                text = _text(top.read_bytes())
                if text:
                    yield f"pypkg-{name[:-3]}", name, text
            continue
        if not top.is_dir() or top.is_symlink():
            continue
        source = "pypkg-" + name.lower().replace(".libs", "").strip("-_") or name
        for root, dirs, names in os.walk(top):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("."))
            for n in sorted(names):
                if not n.endswith(CODE_SUFFIXES):
                    continue
                p = Path(root, n)
                if p.is_symlink():
                    continue
                try:
                    text = _text(p.read_bytes())
                except OSError:
                    continue
                if text:
                    yield source, p.relative_to(site).as_posix(), text


def linux_files(tarball: Path):
    with tarfile.open(tarball, "r:xz") as tar:
        for m in tar:
            if not m.isfile():
                continue
            rel = m.name.removeprefix("./")
            src = linux_source_of(rel)
            if src is None:
                continue
            text = _text(tar.extractfile(m).read())
            if text:
                yield src, f"linux/{rel}", text


def chunk_documents(files: list[tuple[str, str]], doc_bytes: int) -> list[str]:
    """Join (relpath, text) files, in order, into documents of about doc_bytes; long files in pieces."""
    docs, cur, size = [], [], 0
    for rel, text in files:
        pieces = [text]
        if len(text) > doc_bytes:
            pieces, start = [], 0
            while start < len(text):
                end = min(len(text), start + PIECE_BYTES)
                if end < len(text):
                    nl = text.rfind("\n", start + PIECE_BYTES // 2, end)
                    end = nl + 1 if nl > 0 else end
                pieces.append(text[start:end])
                start = end
        for piece in pieces:
            cur.append(f"<<< {rel} >>>\n{piece}")
            size += len(piece)
            if size >= doc_bytes:
                docs.append("\n".join(cur))
                cur, size = [], 0
    if cur:
        docs.append("\n".join(cur))
    return docs


def build(out: Path, *, sites: list[Path], linux: Path | None, doc_bytes: int, min_source_bytes: int,
          max_source_bytes: int, vocab: int) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from securefed.training.data.corpus import write_corpus
    from securefed.training.data.documents import Document, content_hash
    from securefed.training.data.tokenizer import train_bpe, wrap

    t0 = time.perf_counter()
    per_source: dict[str, list[tuple[str, str]]] = {}
    seen: set[bytes] = set()
    dups = 0
    streams = [site_package_files(s) for s in sites] + ([linux_files(linux)] if linux else [])
    for stream in streams:
        for src, rel, text in stream:
            h = hashlib.sha1(text.encode("utf-8")).digest()
            if h in seen:
                dups += 1
                continue
            seen.add(h)
            per_source.setdefault(src, []).append((rel, text))
    # small packages pooled into one source; every source capped (files in path order)
    groups_files: dict[str, list[tuple[str, str]]] = {}
    for src in sorted(per_source):
        files = per_source[src]
        nbytes = sum(len(t) for _, t in files)
        key = src if nbytes >= min_source_bytes or src.startswith("linux-") else "pypkg-small"
        groups_files.setdefault(key, []).extend(files)
    groups: dict[str, list[Document]] = {}
    for src, files in groups_files.items():
        kept, used = [], 0
        for rel, text in files:
            if used + len(text) > max_source_bytes:
                break
            kept.append((rel, text))
            used += len(text)
        texts = chunk_documents(kept, doc_bytes)
        groups[src] = [Document(f"{src}/{i:06d}.txt", src, t) for i, t in enumerate(texts)]
    t_read = time.perf_counter() - t0
    manifest = write_corpus(groups, out / "pile", inputs=[str(s) for s in sites] + ([str(linux)] if linux else []),
                            limits={"doc_bytes": doc_bytes, "min_source_bytes": min_source_bytes,
                                    "max_source_bytes": max_source_bytes}, overwrite=True)
    t_write = time.perf_counter() - t0 - t_read

    # public tokenizer text: this interpreter's stdlib + /usr/include, minus anything a holder holds
    pub, pub_dups = [], 0
    roots = [(Path(sysconfig.get_paths()["stdlib"]), 24_000_000)] + [(p, 8_000_000) for p in (Path("/usr/include"),)
                                                                     if p.is_dir()]
    for root, cap in roots:
        used = 0
        for dirpath, dirs, names in os.walk(root):
            dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and d not in PUBLIC_SKIP_DIRS)
            if used >= cap:
                break
            for n in sorted(names):
                if not n.endswith((".py", ".h")):
                    continue
                p = Path(dirpath, n)
                try:
                    text = _text(p.read_bytes())
                except OSError:
                    continue
                if not text:
                    continue
                if hashlib.sha1(text.encode("utf-8")).digest() in seen:
                    pub_dups += 1
                    continue
                pub.append(Document(f"public/{p.as_posix().lstrip('/')}", "public", text))
                used += len(text)
    tok = wrap(train_bpe([d.text for d in pub], vocab_size=vocab))
    tok.save_pretrained(str(out / "tokenizer"))
    # the same public text as a corpus of one source, OUT/public: what a public initial model trains on
    # (model.init_from, protocols/dp.md §13; benchmarks/privacy/dpsgd_lm.sh PUBLIC_INIT=1)
    write_corpus({"public": pub}, out / "public", inputs=[str(r) for r, _ in roots], limits={}, overwrite=True)
    t_tok = time.perf_counter() - t0 - t_read - t_write
    info = {
        "corpus_content_hash": manifest["content_hash"], "documents": manifest["documents"],
        "bytes": manifest["bytes"], "sources": manifest["sources"], "duplicates_dropped": dups,
        "tokenizer": {"vocab_size": vocab, "public_roots": [[str(r), cap] for r, cap in roots], "documents": len(pub),
                      "bytes": sum(d.n_bytes for d in pub), "content_hash": content_hash(pub),
                      "dropped_as_held_by_holders": pub_dups},
        "seconds": {"read": t_read, "write": t_write, "tokenizer": t_tok},
        "python": sys.version.split()[0],
    }
    (out / "build.json").write_text(json.dumps(info, indent=1) + "\n")
    return info


def count_tokens(out: Path) -> dict:
    """Tokens per source with the built tokenizer (what the >= 200M goal is measured on)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from securefed.training.data.documents import group_by_source, load_documents
    from securefed.training.data.tokenizer import load_tokenizer

    tok = load_tokenizer(out / "tokenizer").backend_tokenizer
    counts = {}
    for src, docs in group_by_source(load_documents(out / "pile")).items():
        n = 0
        for i in range(0, len(docs), 64):
            n += sum(len(e.ids) for e in tok.encode_batch_fast([d.text for d in docs[i:i + 64]], add_special_tokens=False))
        counts[src] = n + len(docs)  # + one EOS per document, as packing adds
    return {"tokens": sum(counts.values()), "per_source": counts}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack-linux", help="pack the linux-source subset into one .tar.xz")
    p.add_argument("src", type=Path)
    p.add_argument("out", type=Path)
    b = sub.add_parser("build", help="write OUT/pile, OUT/tokenizer and OUT/build.json")
    b.add_argument("out", type=Path)
    b.add_argument("--site", type=Path, action="append", help="site-packages dir(s); default: this interpreter's")
    b.add_argument("--linux", type=Path, help="the pack-linux tarball")
    b.add_argument("--doc-bytes", type=int, default=262_144)
    b.add_argument("--min-source-bytes", type=int, default=1_000_000)
    b.add_argument("--max-source-bytes", type=int, default=64_000_000)
    b.add_argument("--vocab-size", type=int, default=32768)
    b.add_argument("--count", action="store_true", help="also count tokens (adds ~1 minute on 16 cores)")
    args = ap.parse_args()
    if args.cmd == "pack-linux":
        pack_linux(args.src, args.out)
        return
    sites = args.site or [Path(sysconfig.get_paths()["purelib"])]
    info = build(args.out, sites=sites, linux=args.linux, doc_bytes=args.doc_bytes,
                 min_source_bytes=args.min_source_bytes, max_source_bytes=args.max_source_bytes, vocab=args.vocab_size)
    if args.count:
        t = time.perf_counter()
        info["token_count"] = count_tokens(args.out)
        info["seconds"]["count"] = time.perf_counter() - t
        (args.out / "build.json").write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps({k: info[k] for k in ("corpus_content_hash", "documents", "bytes", "seconds")}
                     | {"sources": len(info["sources"]), "tokens": info.get("token_count", {}).get("tokens")}))


if __name__ == "__main__":
    main()
