"""`securefed corpus`: build a corpus directory from the stdlib or local paths, train a public
tokenizer, or inspect any data path (sources, documents, bytes, tokens).

    securefed corpus build OUT [--from stdlib|PATH ...] [--max-sources N] [--max-bytes-per-source N]
    securefed corpus inspect PATH [--tokenizer train|FILE|DIR] [--vocab-size N]
    securefed corpus tokenizer OUT [--from stdlib-modules|PATH ...] [--vocab-size N]
"""

from __future__ import annotations

import argparse
import sys

from securefed.commands import positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("corpus", help="build, inspect or tokenize local corpora",
                       description="Build a corpus directory (one subdirectory per source + manifest.json), "
                                   "inspect a data path, or train a tokenizer on PUBLIC text. Exit status: 0 done; "
                                   "2 bad input (one message naming the path), nothing half-written.")  # fmt: skip
    actions = p.add_subparsers(dest="corpus_action", metavar="ACTION")

    b = actions.add_parser("build", help="write a corpus directory from the stdlib and/or local paths",
                           description="Collect documents per source from the stdlib and/or local paths, apply the "
                                       "limits, and write OUT/<source>/<file> plus OUT/manifest.json (inputs, limits, "
                                       "content hash). Written aside and renamed: never half-written.")
    b.add_argument("out", help="directory to create (must be new or empty, or an earlier corpus with --overwrite)")
    b.add_argument("--from", dest="inputs", action="append", metavar="stdlib|PATH",
                   help="'stdlib' (default) or a directory / .jsonl / .parquet (repeatable), "
                        "e.g. --from /usr/share/doc")  # fmt: skip
    b.add_argument("--max-sources", type=positive_int, default=8, metavar="N", help="sources kept per input (default 8)")
    b.add_argument("--all-sources", action="store_true", help="keep every source (no --max-sources limit)")
    b.add_argument("--max-bytes-per-source", type=positive_int, default=400_000, metavar="BYTES",
                   help="whole documents per source up to this many UTF-8 bytes (default 400000); the manifest "
                        "records the limit")
    b.add_argument("--text-field", default="text", help="JSONL/Parquet text field (default: text)")
    b.add_argument("--overwrite", action="store_true",
                   help="replace OUT as a whole if it is an earlier corpus (its manifest.json and source folders, "
                        "nothing else); any other non-empty OUT or a file is refused with exit 2")

    i = actions.add_parser("inspect", help="print sources, documents, bytes and tokens of a data path",
                           description="A table of sources with documents, bytes, tokens and bytes/token for any "
                                       "data path a holder could use; for a built corpus, checks its content hash.")
    i.add_argument("path", help="a corpus directory, a directory of text files, a .jsonl or a .parquet")
    i.add_argument("--tokenizer", default="train",
                   help="'train' (public BPE, cached), a tokenizer.json or a saved tokenizer dir")  # fmt: skip
    i.add_argument("--vocab-size", type=positive_int, default=4096, metavar="N",
                   help="vocabulary of the trained tokenizer (with --tokenizer train; default 4096)")
    i.add_argument("--text-field", default="text", help="JSONL/Parquet text field (default: text)")
    i.add_argument("--cache-dir", help="tokenizer cache (default: $SECUREFED_CACHE or ~/.cache/securefed)")

    t = actions.add_parser("tokenizer", help="train a byte-level BPE on PUBLIC text and save it",
                           description="Train a byte-level BPE on public text only and save it with save_pretrained "
                                       "(use it with --set data.tokenizer=OUT). Never train it on a holder's data: the "
                                       "vocabulary lists its training text's frequent strings and is published.")
    t.add_argument("out", help="directory for the saved tokenizer (loadable with AutoTokenizer)")
    t.add_argument("--from", dest="inputs", action="append", metavar="stdlib-modules|PATH",
                   help="public text only (default: the stdlib's single-file modules); never a holder's data")
    t.add_argument("--vocab-size", type=positive_int, default=4096, metavar="N", help="vocabulary size (default 4096)")
    t.add_argument("--text-field", default="text", help="JSONL/Parquet text field (default: text)")
    p.set_defaults(func=run, corpus_parser=p)


def _build(args: argparse.Namespace) -> int:
    from securefed.training.data.corpus import check_corpus_out, collect_sources, write_corpus

    check_corpus_out(args.out, overwrite=args.overwrite)   # before reading any input: refused at once
    inputs = args.inputs or ["stdlib"]
    max_sources = None if args.all_sources else args.max_sources
    groups = collect_sources(inputs, text_field=args.text_field, max_sources=max_sources,
                             max_bytes_per_source=args.max_bytes_per_source)  # fmt: skip
    limits = {"max_sources": max_sources, "max_bytes_per_source": args.max_bytes_per_source}
    m = write_corpus(groups, args.out, inputs=inputs, limits=limits, overwrite=args.overwrite)
    print(f"wrote {args.out}: {len(m['sources'])} sources, {m['documents']} documents, "
          f"{m['bytes']:,} bytes (content hash {m['content_hash'][:16]}…)")  # one line, never wrapped  # fmt: skip
    return 0


def _inspect(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from securefed.training.data.config import default_cache_dir
    from securefed.training.data.corpus import corpus_stats
    from securefed.training.data.stdlib import tokenizer_corpus
    from securefed.training.data.tokenizer import load_tokenizer, trained_tokenizer

    if args.tokenizer == "train":
        tok = trained_tokenizer(tokenizer_corpus(), vocab_size=args.vocab_size,
                                cache_dir=default_cache_dir(args.cache_dir))  # fmt: skip
    else:
        tok = load_tokenizer(args.tokenizer)
    rows, manifest = corpus_stats(args.path, tokenizer=tok, text_field=args.text_field)
    table = Table(title=f"{args.path}")
    for col in ("source", "documents", "bytes", "tokens", "bytes/token"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for r in rows:
        table.add_row(r["source"], f"{r['documents']:,}", f"{r['bytes']:,}", f"{r['tokens']:,}",
                      f"{r['bytes'] / max(r['tokens'], 1):.2f}")  # fmt: skip
    tot = {k: sum(r[k] for r in rows) for k in ("documents", "bytes", "tokens")}
    table.add_row("[bold]total", f"{tot['documents']:,}", f"{tot['bytes']:,}", f"{tot['tokens']:,}",
                  f"{tot['bytes'] / max(tot['tokens'], 1):.2f}", end_section=True)  # fmt: skip
    console = Console()
    console.print(table)
    console.print(f"tokenizer: {args.tokenizer} (vocab {len(tok)})", soft_wrap=True)
    if manifest is not None:
        ok = manifest.get("content_hash_ok")
        console.print(f"manifest: {manifest.get('format')}, built with {manifest.get('python_version')}, "
                      f"inputs {manifest.get('inputs')}; content hash "
                      + ("[green]matches[/]" if ok else "[red]DIFFERS (files changed since the build)[/]"),
                      soft_wrap=True)  # one line each, never wrapped mid-line  # fmt: skip
    return 0


def _tokenizer(args: argparse.Namespace) -> int:
    from pathlib import Path

    from securefed.outdir import uncreatable
    from securefed.training.data.corpus import collect_sources
    from securefed.training.data.stdlib import tokenizer_corpus
    from securefed.training.data.tokenizer import train_bpe, wrap

    out = Path(args.out).expanduser()
    why = uncreatable(out)
    if why:
        raise FileExistsError(f"{out} cannot be created: {why}; choose another directory")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a directory; choose a new directory")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} exists and is not empty; choose a new directory")
    inputs = args.inputs or ["stdlib-modules"]
    docs = []
    for item in inputs:
        if item == "stdlib-modules":
            docs.extend(tokenizer_corpus())
        else:
            groups = collect_sources([item], text_field=args.text_field, max_sources=None,
                                     max_bytes_per_source=1 << 62)  # fmt: skip
            docs.extend(d for ds in groups.values() for d in ds)
    # the tokenizers library's bars print bare newlines where stdout is not a terminal (a pipe, a log):
    # there, one line on stderr says what runs instead
    bars = sys.stdout.isatty()
    if not bars:
        print(f"training a {args.vocab_size}-token byte-level BPE on {len(docs)} public documents…", file=sys.stderr)
    fast = wrap(train_bpe([d.text for d in docs], vocab_size=args.vocab_size, show_progress=bars))
    fast.save_pretrained(str(out))
    print(f"saved a {len(fast)}-token byte-level BPE trained on {len(docs)} public documents to {out}")
    return 0


def run(args: argparse.Namespace) -> int:
    from securefed.training.data.documents import DataError

    action = {"build": _build, "inspect": _inspect, "tokenizer": _tokenizer}.get(args.corpus_action or "")
    if action is None:
        args.corpus_parser.print_help()
        return 2
    try:
        return action(args)
    except (DataError, FileExistsError, ValueError) as e:
        print(f"securefed corpus {args.corpus_action}: {e}", file=sys.stderr)
        return 2
    except OSError as e:   # a write that failed past the checks (disk full): one line, never a traceback
        from securefed.outdir import os_error_text

        print(f"securefed corpus {args.corpus_action}: {os_error_text(e)}", file=sys.stderr)
        return 2
