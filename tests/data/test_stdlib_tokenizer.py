"""The stdlib default corpus and the public tokenizer (trained only on text no holder uses)."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from securefed.training.data import (
    DataError,
    content_hash,
    load_tokenizer,
    stdlib_sources,
    tokenizer_corpus,
    trained_tokenizer,
)
from securefed.training.data import tokenizer as tokmod
from securefed.training.data.stdlib import PREFERRED_SOURCES


def test_stdlib_sources_are_deterministic_distinct_packages_within_budget():
    a = stdlib_sources(max_sources=5, max_bytes_per_source=50_000)
    b = stdlib_sources(max_sources=5, max_bytes_per_source=50_000)
    assert list(a) == list(b) and content_hash([d for ds in a.values() for d in ds]) == content_hash(
        [d for ds in b.values() for d in ds]
    )
    assert list(a) == [s for s in PREFERRED_SOURCES if s in a][:5]  # fixed preference order
    for src, docs in a.items():
        assert sum(d.n_bytes for d in docs) <= 50_000
        assert all(d.source == src and d.doc_id.startswith(f"{src}/") for d in docs)
        ids = [d.doc_id for d in docs]
        assert ids == sorted(ids)
        assert not any(part in ("test", "tests") for d in docs for part in d.doc_id.split("/")[1:-1])


def test_tokenizer_corpus_is_disjoint_from_every_holder_source():
    public = tokenizer_corpus()
    holders = stdlib_sources(max_sources=None, max_bytes_per_source=10**9)
    assert "test" not in holders
    public_texts = {d.text for d in public}
    assert all(d.doc_id.count("/") == 1 and d.doc_id.endswith(".py") for d in public)  # Lib/*.py only
    assert not any(d.text in public_texts for docs in holders.values() for d in docs)


@pytest.fixture(scope="module")
def tok(cache_dir):
    return trained_tokenizer(tokenizer_corpus(), vocab_size=512, cache_dir=cache_dir)


def test_trained_tokenizer_is_a_transformers_fast_tokenizer_with_specials(tok, tmp_path):
    assert len(tok) == 512
    assert (tok.eos_token, tok.bos_token, tok.pad_token, tok.unk_token) == tokmod.SPECIAL_TOKENS[:1] + (
        tokmod.BOS_TOKEN, tokmod.PAD_TOKEN, tokmod.UNK_TOKEN)  # fmt: skip
    assert len({tok.eos_token_id, tok.bos_token_id, tok.pad_token_id, tok.unk_token_id}) == 4
    text = "def f(x):\n    return x ** 2  # ünïcødé ✓ 漢字\n"
    ids = tok(text)["input_ids"]
    assert tok.unk_token_id not in ids  # byte-level: every byte is in the alphabet
    assert tok.decode(ids) == text
    tok.save_pretrained(tmp_path / "saved")
    again = AutoTokenizer.from_pretrained(str(tmp_path / "saved"), local_files_only=True)
    assert again(text)["input_ids"] == ids and again.eos_token_id == tok.eos_token_id
    from_file = load_tokenizer(tmp_path / "saved" / "tokenizer.json")
    assert from_file(text)["input_ids"] == ids and from_file.pad_token == tok.pad_token


def test_trained_tokenizer_is_cached_by_content(tok, cache_dir, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("retrained although cached")

    monkeypatch.setattr(tokmod, "train_bpe", boom)
    again = trained_tokenizer(tokenizer_corpus(), vocab_size=512, cache_dir=cache_dir)
    assert tokmod.tokenizer_hash(again) == tokmod.tokenizer_hash(tok)
    with pytest.raises(AssertionError, match="retrained"):  # another vocab size is another entry
        trained_tokenizer(tokenizer_corpus(), vocab_size=600, cache_dir=cache_dir)


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.json")
    (tmp_path / "t.json").write_text("{not json")
    with pytest.raises(DataError, match="not a tokenizers tokenizer.json"):
        load_tokenizer(tmp_path / "t.json")
    (tmp_path / "d").mkdir()
    with pytest.raises(DataError, match="has no tokenizer.json"):
        load_tokenizer(tmp_path / "d")
    with pytest.raises(ValueError, match="vocab_size must be >= 260"):
        tokmod.train_bpe(["abc"], vocab_size=100)


def test_bpe_training_is_deterministic():
    texts = [d.text for d in tokenizer_corpus()[:20]]
    hashes = {tokmod.tokenizer_hash(tokmod.wrap(tokmod.train_bpe(texts, vocab_size=400))) for _ in range(2)}
    assert len(hashes) == 1  # every party that trains on the same public text gets the same tokenizer
