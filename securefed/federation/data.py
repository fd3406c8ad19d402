"""What each role builds from its own configuration: a holder's training rows, the coordinator's model
and evaluation set, and (within one process) the shared pieces.

In a simulation every holder of one process asks for the same corpus; building it once and sharing
the trainer's model object (each holder keeps its own AdamW state, step counter and data cursor,
training/trainer.py) is what lets many holders fit in one process. Holders in separate processes
build exactly the same tensors from the same configuration, so every channel computes the same Δ.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from securefed.training.data.config import eval_split_for   # the rule's owner is the data config (dp.md §10.2)

__all__ = ["HolderData", "federated_data", "eval_split_for", "check_unit_caps", "forget_corpora", "holder_rows",
           "document_rows", "record_counts",
           "shared_trainer", "CoordinatorData", "coordinator_data"]

_lock = threading.Lock()
_corpora: dict = {}
_trainers: dict = {}


def federated_data(data_cfg, *, n_holders: int, seed: int, progress: bool, eval_split: str = "budget"):
    """``prepare_federated_data`` once per (config, holders, seed, eval split) in this process."""
    from securefed.training.data import prepare_federated_data

    key = (data_cfg, n_holders, seed, eval_split)
    with _lock:
        if key not in _corpora:
            _corpora.clear()   # one corpus at a time: a process runs one federation
            _corpora[key] = prepare_federated_data(data_cfg, n_holders=n_holders, seed=seed, progress=progress,
                                                   eval_split=eval_split)
        return _corpora[key]


def check_unit_caps(fd, dp_sgd) -> None:
    """DP-SGD per document or group needs the holder's own data uncapped (dp.md §10.2): a cap takes documents in
    order while they fit, so removing one document can let another in, and the neighbour dataset is then not D
    minus one unit. DataError when a cap on the user's data (not the public stdlib demo corpus) left anything out."""
    from securefed.training.data.documents import DataError

    caps = fd.manifest.get("caps") or {}
    if not dp_sgd.whole_units or caps.get("applies_to") == "stdlib":
        return
    if caps.get("cut") or caps.get("sources_left_out"):
        raise DataError(f"train.dp_sgd.unit={dp_sgd.unit}: the data caps left documents out (data_manifest caps: "
                        f"{sorted(caps.get('cut') or {}) + list(caps.get('sources_left_out') or [])}); a cap takes "
                        "documents while they fit, so one document's removal could let another in and the guarantee "
                        "would not be per document. Set data.max_bytes_per_source, data.max_sources and "
                        "data.max_bytes_per_holder to null (or choose the data yourself)")


def forget_corpora() -> None:
    """Drop the corpus built in this process: the next federated_data() builds it again (the privacy audit
    changes the data builder to put canaries into one holder's rows, and must not leave them behind)."""
    with _lock:
        _corpora.clear()


@dataclass
class HolderData:
    train: object                 # (N, seq_len) LongTensor: this holder's own training rows
    tokenizer: object
    tokenizer_sha256: str
    manifest: dict
    # DP-SGD with unit=document: (N,) the document each row belongs to (rows padded with packing.PAD);
    # None: rows packed from the joined documents, one row one record
    units: object | None = None

    @property
    def records(self) -> int:
        """The protected records this holder holds: its documents (unit=document) or its rows."""
        return int(self.units[-1]) + 1 if self.units is not None and len(self.units) else int(self.train.shape[0])


def holder_rows(cfg, *, progress: bool = False) -> HolderData:
    """A holder's rows from its own HolderConfig: its own path (data.holder_paths / data.source), or —
    in a simulation — shard ``cfg.shard`` of ``cfg.data`` split ``cfg.n_shards`` ways."""
    from securefed.training.data.tokenizer import tokenizer_hash

    dp = cfg.dp_sgd
    fd = federated_data(cfg.data, n_holders=cfg.n_shards, seed=cfg.data_seed, progress=progress,
                        eval_split=eval_split_for(dp, cfg.data))
    check_unit_caps(fd, dp)
    man = dict(fd.manifest, holders=[dict(fd.manifest["holders"][cfg.shard])])
    if not dp.whole_units:
        return HolderData(fd.holder_train[cfg.shard], fd.tokenizer, tokenizer_hash(fd.tokenizer), man)
    rows, units = document_rows(fd, cfg.shard, seq_len=cfg.data.seq_len, max_rows=dp.max_rows_per_document,
                                by_group=dp.unit == "group")
    key = "groups" if dp.unit == "group" else "documents"
    man["holders"][0]["dp_sgd_unit"] = {"unit": dp.unit, key: int(units[-1]) + 1, "rows": len(rows),
                                        "max_rows_per_document": dp.max_rows_per_document}
    return HolderData(rows, fd.tokenizer, tokenizer_hash(fd.tokenizer), man, units)


def _group_order(groups: list) -> tuple[list[int], list[int]]:
    """(document order with each group's documents together, first appearance first; each document's group index)."""
    first: dict = {}
    index = [first.setdefault(g, len(first)) for g in groups]
    order = sorted(range(len(groups)), key=lambda i: index[i])        # stable: a group's documents keep their order
    return order, index


def document_rows(fd, shard: int, *, seq_len: int, max_rows: int | None, by_group: bool = False):
    """(rows, units) of holder ``shard`` packed a row set per document (protocols/dp.md §10.2); with ``by_group``
    a unit is all documents sharing a data.unit_field value, their rows side by side. Units are renumbered so
    that only units with a row count as records; DataError if there is none, or no group to group by."""
    import numpy as np
    import torch

    from securefed.training.data.documents import DataError
    from securefed.training.data.packing import pack_documents

    if len(fd.holder_documents) <= shard:
        raise DataError("this corpus carries no per-document token ids (it was changed after it was built), so "
                        "train.dp_sgd.unit=document or group cannot pack it")
    toks = fd.holder_documents[shard]
    if by_group:
        groups = fd.holder_groups[shard] if len(fd.holder_groups) > shard else [None] * len(toks)
        if any(g is None for g in groups):
            raise DataError("train.dp_sgd.unit=group needs data.unit_field: the JSONL field or Parquet column naming "
                            "whom each record is about (e.g. a patient id)")
        order, index = _group_order(groups)
        toks = [toks[i] for i in order]
        doc_unit = np.array([index[i] for i in order], dtype=np.int64)
    rows, units = pack_documents(toks, seq_len=seq_len, eos_id=fd.tokenizer.eos_token_id, max_rows=max_rows)
    if len(rows) == 0:
        raise DataError(f"holder data shard {shard} has no document with two or more tokens: nothing to train on")
    if by_group:
        units = torch.from_numpy(doc_unit[units.numpy()])
    _, dense = np.unique(units.numpy(), return_inverse=True)        # units without a row are not records
    return rows, torch.from_numpy(dense.astype(np.int64))


def record_counts(fd, *, n_holders: int, dp_sgd, seq_len: int) -> tuple[list[int], list[int]]:
    """Per holder (rows its DP-SGD samples from, records δ is set against): rows and rows under unit=sequence;
    document-packed rows and documents (or groups) with a row under unit=document (group) — without packing."""
    from securefed.training.data.packing import document_row_counts

    check_unit_caps(fd, dp_sgd)
    if not dp_sgd.whole_units or len(fd.holder_documents) < n_holders:
        n = [int(h.shape[0]) for h in fd.holder_train]
        return n, n
    rows, units = [], []
    for i, toks in enumerate(fd.holder_documents[:n_holders]):
        c = document_row_counts([int(a.size) for a in toks], seq_len=seq_len, max_rows=dp_sgd.max_rows_per_document)
        rows.append(int(c.sum()))
        if dp_sgd.unit == "group" and len(fd.holder_groups) > i:
            units.append(len({g for g, k in zip(fd.holder_groups[i], c.tolist()) if k > 0}))
        else:
            units.append(int((c > 0).sum()))
    return rows, units


def shared_trainer(preset: str, vocab_size: int, seq_len: int, seed: int, train_cfg):
    """One LocalTrainer (model object) per (model, recipe) in this process; holders add their own state."""
    from securefed.training.models import build_model
    from securefed.training.trainer import LocalTrainer

    key = (preset, vocab_size, seq_len, seed, train_cfg)
    with _lock:
        if key not in _trainers:
            model = build_model(preset, vocab_size=vocab_size, seq_len=seq_len, seed=seed)
            _trainers[key] = LocalTrainer(model, train_cfg)
        return _trainers[key]


@dataclass
class CoordinatorData:
    tokenizer: object
    tokenizer_sha256: str
    eval_rows: object | None      # (M, seq_len) or None: no server-side evaluation
    unigram_eval_ppl: float | None
    manifest: dict | None


def coordinator_data(cfg, *, progress: bool) -> CoordinatorData:
    """The public tokenizer and the coordinator's own evaluation rows (RunConfig.evaluation)."""
    from securefed.training.data.tokenizer import tokenizer_hash

    fd = federated_data(cfg.data, n_holders=cfg.federation.n_holders, seed=cfg.seed, progress=progress,
                        eval_split=eval_split_for(cfg.train.dp_sgd, cfg.data))
    tok_sha = tokenizer_hash(fd.tokenizer)
    if cfg.model.init_from is not None:   # a saved θ0 (dp.md §13) reads token ids: they must be this run's
        from securefed.training.data.tokenizer import check_saved_tokenizer

        check_saved_tokenizer(cfg.model.init_from, tok_sha)   # DataError, before any run directory exists
    return CoordinatorData(fd.tokenizer, tok_sha, fd.eval_global, fd.unigram_eval_ppl, fd.manifest)
