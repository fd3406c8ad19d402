"""prepare_federated_data: documents -> public tokenizer -> eval split -> partition -> packed tensors.

    select documents per source (stdlib packages, a local path, or one path per holder)
    tokenizer  = BPE trained on the PUBLIC stdlib modules (cached), or loaded from a file
    token ids  per document (cached by corpus hash + tokenizer hash: public corpora only — stdlib, data.token_cache)
    per source: hash-ranked held-out documents -> eval_per_source; the rest -> training pool
    partition the training pool among holders (iid / by_source / dirichlet), or holder_paths
    pack each holder's documents into (N_i, seq_len) rows; central_train = their union

The order matters for privacy and honesty: the eval split is taken before partitioning, so no eval
document is in any holder's training data, and the tokenizer never sees a holder's document.
A holder's own documents are never written to the cache either: token ids decode back to the text with the public
tokenizer, and a cache under ~/.cache (shared by every run of the account, kept after the data is deleted) would be a
second copy of regulated records outside the holder's state directory (threat_models/system.md SYS-29).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import PreTrainedTokenizerFast

from ...configio import to_dict
from ...progress import Progress
from .caps import cap_holder, caps_statement, cut_between
from .config import DataConfig, default_cache_dir
from .documents import DataError, Document, content_hash, group_by_source, load_documents, select_documents
from .packing import eval_rank, pack, split_eval, unigram_perplexity
from .partition import partition
from .progress import Steps
from .stdlib import python_version, stdlib_sizes, stdlib_sources, tokenizer_corpus
from .tokenizer import load_tokenizer, tokenizer_hash, trained_tokenizer

log = logging.getLogger(__name__)

__all__ = ["FederatedData", "prepare_federated_data", "load_sources", "load_sources_capped", "tokenize_documents"]


@dataclass
class FederatedData:
    tokenizer: PreTrainedTokenizerFast
    holder_train: list[torch.Tensor]  # one (N_i, seq_len) LongTensor per holder
    holder_sources: list[tuple[str, ...]]  # which sources each holder holds
    central_train: torch.Tensor  # the union of all holders' training rows (centralized baseline)
    eval_global: torch.Tensor  # (M, seq_len): all per-source eval rows, concatenated
    eval_per_source: dict[str, torch.Tensor]
    unigram_eval_ppl: float
    manifest: dict  # what was built: sources, doc counts, bytes, tokens, hashes, python version
    # each holder's training documents' token ids (views of the tokenized corpus, no copies), in partition
    # order: DP-SGD with unit=document packs them a row set per document (packing.pack_documents)
    holder_documents: list[list[np.ndarray]] = field(default_factory=list)
    # the same documents' data.unit_field values (Document.group; None without a unit_field)
    holder_groups: list[list[str | None]] = field(default_factory=list)


def load_sources(config: DataConfig) -> list[dict[str, list[Document]]]:
    """Selected documents per source: one mapping per holder path, or a single one for the pool."""
    return load_sources_capped(config)[0]


def load_sources_capped(config: DataConfig) -> tuple[list[dict[str, list[Document]]], dict]:
    """:func:`load_sources`, and what the caps left out (data_manifest.json "caps"; see caps.py)."""
    limits = {"max_sources": config.max_sources, "max_bytes_per_source": config.max_bytes_per_source,
              "max_bytes_per_holder": config.max_bytes_per_holder}
    if config.holder_paths:  # a holder's data is all its own: only max_bytes_per_holder applies
        out, cut = [], {}
        for i, path in enumerate(config.holder_paths):
            groups = group_by_source(load_documents(path, text_field=config.text_field, unit_field=config.unit_field))
            renamed = {
                f"holder{i}:{src}": [Document(f"holder{i}:{d.doc_id}", f"holder{i}:{src}", d.text, d.group) for d in docs]
                for src, docs in groups.items()
            }  # prefix: two holders' "docs" directories stay two sources
            kept = cap_holder(renamed, config.max_bytes_per_holder)
            if (c := cut_between(f"holder{i}", renamed, kept)) is not None:
                cut[f"holder{i}"] = c
            out.append(kept)
        return out, {"applies_to": "holder_paths", **limits, "cut": cut, "sources_left_out": []}
    if config.source == "stdlib" and config.unit_field is not None:
        raise DataError("data.unit_field is read from JSONL or Parquet records; the stdlib corpus has none")
    if config.source == "stdlib":
        kept = stdlib_sources(max_sources=config.max_sources, max_bytes_per_source=config.max_bytes_per_source)
        sizes = stdlib_sizes()
        cut = {s: {"documents": [len(ds), sizes[s][0]], "bytes": [sum(d.n_bytes for d in ds), sizes[s][1]]}
               for s, ds in kept.items() if s in sizes and sum(d.n_bytes for d in ds) < sizes[s][1]}
        left = [s for s, (n, _) in sizes.items() if s not in kept and n]  # packages past max_sources
        return [kept], {"applies_to": "stdlib", **limits, "cut": cut, "sources_left_out": left}
    groups = group_by_source(load_documents(config.source, text_field=config.text_field, unit_field=config.unit_field))
    kept = select_documents(groups, max_sources=config.max_sources, max_bytes_per_source=config.max_bytes_per_source)
    # a source none of whose documents fits max_bytes_per_source is cut to nothing by that cap (its one 29 MB file),
    # not "left out by max_sources": any source with one document that fits is kept until max_sources is reached
    cap = config.max_bytes_per_source
    too_big = {s for s in groups if s not in kept and cap is not None and min(d.n_bytes for d in groups[s]) > cap}
    cut = {s: c for s in groups if (s in kept or s in too_big)
           and (c := cut_between(s, groups[s], kept.get(s, []))) is not None}
    left = [s for s in groups if s not in kept and s not in too_big]
    return [kept], {"applies_to": "source", **limits, "cut": cut, "sources_left_out": left}


def _encode(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> list[np.ndarray]:
    backend = tokenizer.backend_tokenizer
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # fast: no char offsets
    return [np.asarray(e.ids, dtype=np.int32) for e in encode(texts, add_special_tokens=False)]


def _save_atomic(path: Path, **arrays: np.ndarray) -> None:
    """Write an .npz via a temporary file + rename: readers never see a half-written cache file.
    A cache that cannot be written slows later runs down; it must not stop this one."""
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".npz", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except OSError as e:
        log.warning("cannot write the cache file %s (%s); continuing without it", path, e)
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def tokenize_documents(
    docs: Sequence[Document], tokenizer: PreTrainedTokenizerFast, *, cache_dir: Path | None, steps: Steps
) -> dict[str, np.ndarray]:
    """Token ids (no special tokens) per document id; cached as one flat array + offsets."""
    key = hashlib.sha256(f"{content_hash(docs)}:{tokenizer_hash(tokenizer)}".encode()).hexdigest()[:32]
    path = cache_dir / "tokens" / f"{key}.npz" if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            with np.load(path) as z:
                flat, offsets = z["tokens"], z["offsets"]
            if len(offsets) == len(docs) + 1:
                return {d.doc_id: flat[offsets[i] : offsets[i + 1]] for i, d in enumerate(docs)}
        except (OSError, ValueError, KeyError):
            pass  # damaged cache entry: recompute and overwrite
    arrays: list[np.ndarray] = []
    batch = 32
    for start in steps.track(range(0, len(docs), batch), len(range(0, len(docs), batch)), "tokenizing"):
        arrays.extend(_encode(tokenizer, [d.text for d in docs[start : start + batch]]))
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    np.cumsum([a.size for a in arrays], out=offsets[1:])
    if path is not None:
        flat = np.concatenate(arrays) if arrays else np.zeros(0, np.int32)
        _save_atomic(path, tokens=flat, offsets=offsets)
    return {d.doc_id: a for d, a in zip(docs, arrays, strict=True)}


@contextmanager
def _caps_named(caps: dict) -> Iterator[None]:
    """A DataError raised once the caps have cut the data names what they left out: a 29 MB folder that reads as
    "1 training documents cannot be split among 3 holders" is max_bytes_per_source's doing, which the summary line
    that would have said so never reached."""
    try:
        yield
    except DataError as e:
        capped = caps_statement(caps)
        if capped is None:
            raise
        raise DataError(f"{e} ({capped})") from None


def _check_args(config: DataConfig, n_holders: int, seed: int) -> None:
    if not isinstance(config, DataConfig):
        raise TypeError(f"config must be a DataConfig, got {type(config).__name__}")
    if isinstance(n_holders, bool) or not isinstance(n_holders, int):
        raise TypeError(f"n_holders must be an int, got {type(n_holders).__name__}")
    if n_holders < 1:
        raise ValueError(f"n_holders must be >= 1, got {n_holders}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if config.holder_paths and len(config.holder_paths) != n_holders:
        raise ValueError(f"data.holder_paths lists {len(config.holder_paths)} paths but n_holders is {n_holders}")


def _tokenizer(config: DataConfig, cache: Path) -> tuple[PreTrainedTokenizerFast, dict]:
    if config.tokenizer != "train":
        return load_tokenizer(config.tokenizer), {"kind": "file", "path": config.tokenizer}
    public = tokenizer_corpus()  # never the holders' documents: see tokenizer.py
    tok = trained_tokenizer(public, vocab_size=config.vocab_size, cache_dir=cache)
    info = {
        "kind": "trained",
        "corpus": "stdlib single-file modules (public, disjoint from holders)",
        "corpus_hash": content_hash(public),
        "corpus_documents": len(public),
        "corpus_bytes": sum(d.n_bytes for d in public),
    }
    return tok, info


def _eval_cut(fraction: float) -> bytes:
    """The eval_rank below which an id is held out: a share ``fraction`` of all hashes."""
    return min(int(fraction * 2**64), 2**64 - 1).to_bytes(8, "big") + b"\x00" * 24


def _hold_out(
    groups: dict[str, list[Document]], ids: dict[str, np.ndarray], config: DataConfig, eos_id: int,
    independent: bool = False,
) -> tuple[dict[str, list[Document]], dict[str, torch.Tensor], dict[str, dict]]:
    """Per source: (training documents, packed eval rows, stats); sources too small for one eval
    row are left out of the eval dict (their stats say eval_sequences = 0). ``independent`` (DP-SGD with
    unit=document): each document held out by a hash of its own text, so no document's removal moves another."""
    n_tok = {d.doc_id: int(ids[d.doc_id].size) + 1 for docs in groups.values() for d in docs}  # + EOS
    train, evals, stats = {}, {}, {}
    for src, docs in groups.items():
        if config.unit_field is not None:
            # whole ids, each held out by its own hash: a person's documents are all held out or all trained on, and
            # removing one person moves no other document between the splits (split_eval's token target and JSONL
            # line-numbered ids would: the neighbour dataset then differs in other people's documents; dp.md §10.2)
            held = [eval_rank("unit-field\x00" + d.group) < _eval_cut(config.eval_fraction) for d in docs]
            tr = [d for d, h in zip(docs, held) if not h]
            ev = [d for d, h in zip(docs, held) if h]
        elif independent:
            # unit=document: split_eval's token target and JSONL's line-numbered ids tie each document's side to the
            # others (removing one moved others between train and eval); a hash of the text ties it to nothing else
            held = [eval_rank("document-text\x00" + hashlib.sha256(d.text.encode("utf-8")).hexdigest())
                    < _eval_cut(config.eval_fraction) for d in docs]
            tr = [d for d, h in zip(docs, held) if not h]
            ev = [d for d, h in zip(docs, held) if h]
        else:
            tr, ev = split_eval(
                docs, eval_fraction=config.eval_fraction, n_tokens=lambda d: n_tok[d.doc_id],
                min_eval_tokens=config.seq_len,
            )
        rows = pack([ids[d.doc_id] for d in ev], seq_len=config.seq_len, eos_id=eos_id)
        train[src] = tr
        if len(rows):
            evals[src] = rows
        stats[src] = {
            "documents": len(docs),
            "bytes": sum(d.n_bytes for d in docs),
            "tokens": sum(n_tok[d.doc_id] for d in docs),
            "train_documents": len(tr),
            "eval_documents": len(ev),
            "eval_sequences": len(rows),
        }
    return train, evals, stats


def prepare_federated_data(config: DataConfig, *, n_holders: int, seed: int,
                           progress: bool | Progress = True, eval_split: str = "budget") -> FederatedData:
    """Build every holder's training rows, the eval splits and the shared tokenizer (see module doc).
    ``eval_split``: "budget" (split_eval: about eval_fraction of each source's tokens) or "independent" (each
    document by a hash of its text, DP-SGD unit=document: protocols/dp.md §10.2); with data.unit_field, each
    id by a hash of the id, whatever this says."""
    if eval_split not in ("budget", "independent"):
        raise ValueError(f"eval_split must be 'budget' or 'independent', got {eval_split!r}")
    _check_args(config, n_holders, seed)
    cache = default_cache_dir(config.cache_dir)
    stdlib = config.source == "stdlib" and not config.holder_paths
    where = "the standard library corpus" if stdlib else "the data"
    t0 = time.perf_counter()
    with Steps(progress) as steps:
        with steps.step("reading documents"):
            parts, caps = load_sources_capped(config)  # one mapping per holder path, or one for the whole pool
        with _caps_named(caps):   # an error of data a cap cut says so (the cap, not the data, may be short)
            groups = {src: docs for p in parts for src, docs in p.items()}
            all_docs = [d for docs in groups.values() for d in docs]
            with steps.step("tokenizer"):
                tok, tok_info = _tokenizer(config, cache)
            eos = tok.eos_token_id
            # only a public corpus is cached (module doc, SYS-29): stdlib, or a data.source its owner marks public
            # with data.token_cache (the GPU study's corpus); a local path may hold a holder's records
            public = stdlib or (config.token_cache and not config.holder_paths)
            ids = tokenize_documents(all_docs, tok, cache_dir=cache if public else None, steps=steps)

            total = sum(int(a.size) + 1 for a in ids.values())
            if total < config.seq_len:
                raise DataError(
                    f"{where} holds {total} tokens after tokenization, less than one sequence "
                    f"(seq_len={config.seq_len}); add documents or lower seq_len"
                )
            independent = eval_split == "independent"
            train_by_source, eval_per_source, src_stats = _hold_out(groups, ids, config, eos, independent)
            if not eval_per_source and independent and config.unit_field is None:
                raise DataError(
                    f"{where} leaves no held-out evaluation sequence: with train.dp_sgd.unit=document each document is "
                    f"held out with probability data.eval_fraction ({config.eval_fraction}) by a hash of its text, and "
                    f"none of its {len(all_docs)} documents was; raise data.eval_fraction or add documents"
                )
            if not eval_per_source and config.unit_field is not None:
                raise DataError(
                    f"{where} leaves no held-out evaluation sequence: with data.unit_field whole ids are held out, each "
                    f"with probability data.eval_fraction ({config.eval_fraction}) by a hash of the id, and none of its "
                    f"{len({d.group for d in all_docs})} ids was; raise data.eval_fraction or add ids"
                )
            if not eval_per_source:
                raise DataError(
                    f"{where} leaves no held-out evaluation sequence: every source has fewer than two "
                    f"documents or too little text for one sequence of seq_len={config.seq_len}"
                )

            if config.holder_paths:  # each holder keeps its own documents (minus its held-out ones)
                holder_docs = [[d for src in p for d in train_by_source[src]] for p in parts]
            else:
                pool = [d for docs in train_by_source.values() for d in docs]
                holder_docs = partition(pool, n_holders, method=config.partition, seed=seed, alpha=config.dirichlet_alpha)
            holder_train, holder_sources, holder_stats, holder_tokens, holder_groups = [], [], [], [], []
            for i, docs in enumerate(holder_docs):
                holder_tokens.append([ids[d.doc_id] for d in docs])
                holder_groups.append([d.group for d in docs])
                rows = pack([ids[d.doc_id] for d in docs], seq_len=config.seq_len, eos_id=eos)  # (N_i, seq_len)
                present = {d.source for d in docs}
                srcs = tuple(s for s in groups if s in present)
                if len(rows) == 0:
                    n = sum(int(ids[d.doc_id].size) + 1 for d in docs)
                    raise DataError(
                        f"holder {i} (sources {list(srcs)}) has {n} training tokens, less than one sequence "
                        f"(seq_len={config.seq_len}); give it more data, use fewer holders or a shorter seq_len"
                    )
                holder_train.append(rows)
                holder_sources.append(srcs)
                holder_stats.append({"sources": list(srcs), "documents": len(docs), "sequences": len(rows),
                                     "tokens": int(rows.numel())})  # fmt: skip
                if config.unit_field is not None:   # how many ids (data.unit_field) the holder's documents are about
                    holder_stats[-1]["groups"] = len({d.group for d in docs})
            central = torch.cat(holder_train)  # (sum N_i, seq_len)
            eval_global = torch.cat(list(eval_per_source.values()))  # (M, seq_len)
            ppl = unigram_perplexity(central, eval_global, len(tok))
            capped = caps_statement(caps)  # never silent: a cap on anyone's data is said here and in the manifest
            steps.done(
                f"data: {len(groups)} sources, {len(all_docs)} documents, {n_holders} holders, {len(central)} train / "
                f"{len(eval_global)} eval rows of {config.seq_len}, unigram ppl {ppl:.1f} "
                f"({time.perf_counter() - t0:.1f} s)" + (f"; {capped}" if capped else "")
            )
    manifest = {
        "format": "securefed-data-manifest-v1",
        "python_version": python_version(),
        "corpus": "stdlib" if stdlib else (list(config.holder_paths) or config.source),
        "content_hash": content_hash(all_docs),
        "sources": src_stats,
        "holders": holder_stats,
        "caps": caps,
        "eval": {
            "documents": sum(s["eval_documents"] for s in src_stats.values()),
            "sequences": len(eval_global),
            "tokens": int(eval_global.numel()),
        },
        "tokenizer": {**tok_info, "hash": tokenizer_hash(tok), "vocab_size": len(tok)},
        "partition": {
            "method": "holder_paths" if config.holder_paths else config.partition,
            "n_holders": n_holders,
            "seed": seed,
            "dirichlet_alpha": config.dirichlet_alpha,
        },
        "unigram_eval_ppl": ppl,
        "eval_split": "by unit_field id" if config.unit_field is not None else eval_split,
        "config": to_dict(config),
    }
    return FederatedData(tok, holder_train, holder_sources, central, eval_global, eval_per_source, ppl, manifest,
                         holder_tokens, holder_groups)
