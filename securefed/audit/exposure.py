"""Secret Sharer exposure (Carlini, Liu, Erlingsson, Kos, Song, USENIX Security 2019) on a model trained
by `securefed simulate`, with canaries inserted into one data holder's training rows.

A canary is ``prefix ‖ s`` with s drawn uniformly from the randomness space R = A^L (alphabet A of
|A| tokens, L positions; |R| = |A|^L). After training, every candidate r ∈ R is ranked by its
log-perplexity −Σ log p(r_l | prefix, r_<l); the exposure of the inserted secret s is
    exposure(s) = log2 |R| − log2 rank(s)          (§4.1, Definition 4),
so a random, never-seen secret has expected exposure ≈ 1/ln 2 ≈ 1.44 bits and a fully memorised one
log2 |R|. Control canaries (same format, never inserted) measure the baseline.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CanarySet", "make_canaries", "insert_canaries", "exposure", "canaries_inserted_into"]

PREFIX_TEXT = "my secret code is"


@dataclass(frozen=True)
class CanarySet:
    prefix: tuple[int, ...]
    alphabet: tuple[int, ...]
    inserted: tuple[tuple[int, ...], ...]   # secrets put into the holder's data
    control: tuple[tuple[int, ...], ...]    # secrets of the same format, never inserted

    @property
    def space(self) -> int:
        return len(self.alphabet) ** len(self.inserted[0])


def make_canaries(tokenizer, *, length: int = 4, inserted: int = 2, control: int = 2, seed: int = 0) -> CanarySet:
    prefix = tuple(tokenizer.encode(PREFIX_TEXT, add_special_tokens=False))
    digits = [tokenizer.encode(f" {d}", add_special_tokens=False) for d in range(10)]
    if all(len(t) == 1 for t in digits) and len({t[0] for t in digits}) == 10:
        alphabet = tuple(t[0] for t in digits)
    else:  # a byte-level vocabulary without " 0".." 9" tokens: ten fixed ids of the same rare merges
        v = len(tokenizer)
        alphabet = tuple(range(v - 20, v - 10))
    rng = np.random.default_rng(seed)
    secrets = set()
    while len(secrets) < inserted + control:
        secrets.add(tuple(int(alphabet[i]) for i in rng.integers(0, len(alphabet), length)))
    secrets = sorted(secrets)
    rng.shuffle(secrets)
    return CanarySet(prefix, alphabet, tuple(secrets[:inserted]), tuple(secrets[inserted:]))


def insert_canaries(data, canaries: CanarySet, *, holder: int = 0, rows_per_canary: int = 16, seed: int = 0):
    """Copy of FederatedData where ``rows_per_canary`` random rows of ``holder`` start with each canary."""
    rows = data.holder_train[holder].clone()                      # (N, T) token ids
    rng = np.random.default_rng(seed)
    picks = rng.choice(rows.shape[0], size=min(rows.shape[0], rows_per_canary * len(canaries.inserted)), replace=False)
    for n, idx in enumerate(picks):
        seq = canaries.prefix + canaries.inserted[n % len(canaries.inserted)]
        rows[idx, : len(seq)] = torch.tensor(seq, dtype=rows.dtype)
    train = list(data.holder_train)
    train[holder] = rows
    # the per-document token ids lack the canaries: drop them, so a document-unit DP-SGD holder (which packs
    # from them) refuses this corpus instead of training on one without canaries (federation/data.document_rows)
    return dataclasses.replace(data, holder_train=train, holder_documents=[])


@contextmanager
def canaries_inserted_into(canaries: CanarySet, **kw):
    """Within the block, `Simulation` sees holders' data with the canaries in (patches the data builder).

    securefed.federation.data builds the corpus once per process and hands every holder its rows from
    that copy: the copy is dropped on entry (so the patched builder runs) and on exit (so no later run in
    this process trains on canaries)."""
    import securefed.training.data as data_mod
    from securefed.federation.data import forget_corpora

    original = data_mod.prepare_federated_data

    def patched(*a, **k):
        return insert_canaries(original(*a, **k), canaries, **kw)

    data_mod.prepare_federated_data = patched
    forget_corpora()
    try:
        yield
    finally:
        data_mod.prepare_federated_data = original
        forget_corpora()


@torch.no_grad()
def _log_perplexities(model, prefix: tuple[int, ...], candidates: np.ndarray, batch: int = 2048) -> np.ndarray:
    """−Σ_l log p(c_l | prefix, c_<l) for each candidate row of ``candidates`` (N, L)."""
    model.eval()
    p, out = len(prefix), []
    for s in range(0, len(candidates), batch):
        c = torch.as_tensor(candidates[s : s + batch], dtype=torch.long)            # (B, L)
        x = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(len(c), p), c], dim=1)  # (B, p+L)
        logp = torch.log_softmax(model(input_ids=x).logits.float(), dim=-1)        # (B, p+L, V)
        tgt = logp[:, p - 1 : -1, :].gather(-1, c.unsqueeze(-1)).squeeze(-1)     # (B, L)
        out.append((-tgt.sum(dim=1)).numpy())
    return np.concatenate(out)


def exposure(model, canaries: CanarySet) -> dict:
    """Exposure (bits) of each inserted and control secret, ranked over the whole space R."""
    L = len(canaries.inserted[0])
    space = np.array(list(itertools.product(canaries.alphabet, repeat=L)), dtype=np.int64)  # (|R|, L)
    ppl = _log_perplexities(model, canaries.prefix, space)
    index = {tuple(int(t) for t in row): i for i, row in enumerate(space)}

    def one(secret) -> float:
        mine = ppl[index[secret]]
        rank = int(np.sum(ppl < mine)) + 1                 # 1 = the most likely candidate
        return math.log2(len(space)) - math.log2(rank)

    ins = [one(s) for s in canaries.inserted]
    ctl = [one(s) for s in canaries.control]
    return {"space_bits": math.log2(len(space)), "inserted": ins, "control": ctl,
            "inserted_mean": float(np.mean(ins)), "control_mean": float(np.mean(ctl))}
