"""Data for federated pre-training: local sources, the stdlib default corpus, a public tokenizer,
partitioners, sequence packing, held-out splits and the unigram baseline.

The tokenizer is trained on a PUBLIC corpus only, never on the holders' data: a BPE vocabulary
lists its training text's frequent strings, and the tokenizer is shared with every holder and
published beside the model (see tokenizer.py).

Entry point for the trainer/runtime: ``prepare_federated_data(DataConfig(...), n_holders=, seed=)``.
"""

from .config import DataConfig, default_cache_dir
from .documents import DataError, Document, content_hash, group_by_source, load_documents, select_documents
from .packing import pack, split_eval, unigram_perplexity
from .partition import partition, partition_by_source, partition_dirichlet, partition_iid
from .pipeline import FederatedData, load_sources, prepare_federated_data, tokenize_documents
from .stdlib import stdlib_sources, tokenizer_corpus
from .tokenizer import SPECIAL_TOKENS, load_tokenizer, train_bpe, trained_tokenizer, wrap

__all__ = [
    "DataConfig", "FederatedData", "prepare_federated_data", "DataError", "Document",
    "load_documents", "group_by_source", "select_documents", "content_hash", "stdlib_sources",
    "tokenizer_corpus", "load_sources", "tokenize_documents", "train_bpe", "wrap", "load_tokenizer",
    "trained_tokenizer", "SPECIAL_TOKENS", "partition", "partition_iid", "partition_by_source",
    "partition_dirichlet", "pack", "split_eval", "unigram_perplexity", "default_cache_dir",
]  # fmt: skip
