"""Byte-level BPE tokenizer, trained on a PUBLIC corpus only, wrapped for transformers.

Why never on the holders' data: a BPE vocabulary is a list of the training corpus's most frequent
strings. The tokenizer is a shared artifact (sent to every holder, saved beside the model, published
with it), so a tokenizer trained on private documents leaks their frequent strings (names, e-mail
addresses, identifiers, boilerplate of a confidential code base) to everyone, outside any secure
aggregation or differential-privacy guarantee. The default therefore trains on a public corpus
(the stdlib's single-file modules, disjoint from every holder's data: see ``stdlib.py``), or loads
a tokenizer file that the operator vouches was trained on public text.

Trained tokenizers are cached by a hash of (training corpus, vocab size, special tokens,
``tokenizers`` version), so the second run loads in milliseconds.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

import tokenizers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .documents import DataError, Document, content_hash

__all__ = [
    "EOS_TOKEN", "BOS_TOKEN", "PAD_TOKEN", "UNK_TOKEN", "SPECIAL_TOKENS",
    "train_bpe", "wrap", "load_tokenizer", "trained_tokenizer", "tokenizer_hash",
]  # fmt: skip

log = logging.getLogger(__name__)

EOS_TOKEN = "<|endoftext|>"
BOS_TOKEN = "<|bos|>"
PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"
SPECIAL_TOKENS = (EOS_TOKEN, BOS_TOKEN, PAD_TOKEN, UNK_TOKEN)  # ids 0..3 in a trained tokenizer
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS)  # the byte alphabet must fit


def train_bpe(texts: Sequence[str], *, vocab_size: int, show_progress: bool = False) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style pre-tokenization, no prefix space) on ``texts``."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TypeError("vocab_size must be an int")
    if vocab_size < _MIN_VOCAB:
        raise ValueError(f"vocab_size must be >= {_MIN_VOCAB} (256 bytes + special tokens), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodable: no UNK ever
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tok


def _find(tok: Tokenizer, candidates: Sequence[str]) -> str | None:
    vocab = tok.get_vocab(with_added_tokens=True)
    return next((c for c in candidates if c in vocab), None)


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """A transformers tokenizer around ``tok`` with eos/bos/pad/unk set (missing ones are added as
    special tokens, for tokenizer files from elsewhere)."""
    names = {
        "eos_token": _find(tok, (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>")) or EOS_TOKEN,
        "bos_token": _find(tok, (BOS_TOKEN, "<s>", "<bos>", "<|begin_of_text|>")) or BOS_TOKEN,
        "pad_token": _find(tok, (PAD_TOKEN, "<pad>", "[PAD]")) or PAD_TOKEN,
        "unk_token": _find(tok, (UNK_TOKEN, "<unk>", "[UNK]")) or UNK_TOKEN,
    }
    # model_max_length stays unset: packing cuts rows itself, and the model config owns the limit.
    return PreTrainedTokenizerFast(tokenizer_object=tok, **names)


def tokenizer_hash(fast: PreTrainedTokenizerFast) -> str:
    """SHA-256 of the serialized tokenizer (vocabulary, merges, specials): keys the token cache."""
    state = fast.backend_tokenizer.to_str()
    specials = json.dumps(fast.special_tokens_map, sort_keys=True)
    return hashlib.sha256((state + "\x00" + specials).encode("utf-8")).hexdigest()


def check_saved_tokenizer(model_dir: str | os.PathLike, expected_sha256: str) -> None:
    """model.init_from: a saved model's token ids mean something only under its own tokenizer. When the directory
    holds one (tokenizer.json), it must be the run's (the same :func:`tokenizer_hash`); DataError otherwise. Without
    one only the vocabulary size is checked (by the weights' shapes), and the log says so."""
    p = Path(model_dir).expanduser()
    if not (p / "tokenizer.json").is_file():
        log.warning("model.init_from: %s holds no tokenizer.json, so whether its token ids are this run's cannot be "
                    "checked (only the vocabulary size is); save the model with its tokenizer", p)
        return
    saved = tokenizer_hash(load_tokenizer(p))
    if saved != expected_sha256:
        raise DataError(f"model.init_from: {p} was saved with another tokenizer (sha256 {saved[:12]}…) than this "
                        f"run's ({expected_sha256[:12]}…): its embeddings would read other tokens. Set data.tokenizer "
                        f"to {p}, or start from a model trained with this run's tokenizer")


def load_tokenizer(path: str | os.PathLike) -> PreTrainedTokenizerFast:
    """Load a ``tokenizer.json`` file or a directory saved with ``save_pretrained``."""
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"tokenizer path {p} does not exist")
    if p.is_dir():
        if not (p / "tokenizer.json").is_file():
            raise DataError(f"tokenizer directory {p} has no tokenizer.json")
        try:
            fast = PreTrainedTokenizerFast.from_pretrained(str(p), local_files_only=True)
        except (OSError, ValueError) as e:
            raise DataError(f"cannot load the tokenizer saved in {p}: {e}") from None
        if fast.eos_token is None:
            fast = wrap(fast.backend_tokenizer)
        return fast
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # tokenizers raises a bare Exception on parse errors
        raise DataError(f"{p} is not a tokenizers tokenizer.json file: {e}") from None
    return wrap(tok)


def trained_tokenizer(
    corpus: Sequence[Document], *, vocab_size: int, cache_dir: Path, progress: bool = False
) -> PreTrainedTokenizerFast:
    """Train (or load from ``cache_dir/tokenizers/<key>``) a BPE on the public ``corpus``."""
    spec = json.dumps(
        {"corpus": content_hash(corpus), "vocab_size": vocab_size, "specials": SPECIAL_TOKENS,
         "tokenizers": tokenizers.__version__, "recipe": "bytelevel-bpe-v1"},
        sort_keys=True,
    )  # fmt: skip
    key = hashlib.sha256(spec.encode()).hexdigest()[:24]
    target = cache_dir / "tokenizers" / key
    if (target / "tokenizer.json").is_file():
        try:
            return PreTrainedTokenizerFast.from_pretrained(str(target), local_files_only=True)
        except (OSError, ValueError):
            shutil.rmtree(target, ignore_errors=True)  # a damaged cache entry: retrain
    fast = wrap(train_bpe([d.text for d in corpus], vocab_size=vocab_size, show_progress=progress))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=target.parent))
    except OSError as e:  # a read-only cache slows later runs down; it must not stop this one
        log.warning("cannot write the tokenizer cache under %s (%s); continuing without it", target.parent, e)
        return fast
    fast.save_pretrained(str(tmp))
    try:
        os.rename(tmp, target)  # atomic: readers see a complete directory or none
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return fast
