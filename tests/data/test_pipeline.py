"""prepare_federated_data end to end on small corpora: shapes, the eval/train separation, caching,
determinism, holder paths, and one clear error per kind of bad input."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from securefed.configio import ConfigError, from_dict
from securefed.training.data import DataConfig, DataError, prepare_federated_data
from securefed.training.data import pipeline as pipemod


def windows(rows: list[torch.Tensor], n: int) -> set[tuple[int, ...]]:
    """Every length-n window of each holder's concatenated training stream."""
    out = set()
    for r in rows:
        flat = r.reshape(-1).tolist()
        out.update(tuple(flat[i : i + n]) for i in range(len(flat) - n + 1))
    return out


def test_default_shapes_and_contract(small_config):
    fd = prepare_federated_data(small_config(), n_holders=2, seed=0, progress=False)
    assert len(fd.holder_train) == 2 == len(fd.holder_sources)
    for rows in fd.holder_train:
        assert rows.dtype == torch.long and rows.ndim == 2 and rows.shape[1] == 32 and len(rows) > 0
        assert int(rows.max()) < len(fd.tokenizer)
    assert torch.equal(fd.central_train, torch.cat(fd.holder_train))
    assert torch.equal(fd.eval_global, torch.cat(list(fd.eval_per_source.values())))
    # by_source, 4 sources, 2 holders: round-robin, whole sources
    srcs = list(fd.manifest["sources"])
    assert fd.holder_sources == [(srcs[0], srcs[2]), (srcs[1], srcs[3])]
    assert set(fd.eval_per_source) == set(srcs)
    m = fd.manifest
    assert m["python_version"] and len(m["content_hash"]) == 64 and m["tokenizer"]["vocab_size"] == 512
    for s in m["sources"].values():
        assert s["train_documents"] + s["eval_documents"] == s["documents"] and s["eval_documents"] >= 1
    assert 1.0 < fd.unigram_eval_ppl < 512
    assert fd.unigram_eval_ppl == pytest.approx(m["unigram_eval_ppl"])


@pytest.mark.parametrize("method", ["iid", "by_source", "dirichlet"])
def test_eval_text_never_appears_in_any_holders_training_data(tmp_path, cache_dir, method, write_tree):
    # random unique text: any 24-token window of an eval document identifies that document
    root = write_tree(tmp_path / "c", {"a": 1, "b": 2, "c": 1, "d": 1}, docs_per_source=10, words=120)
    cfg = DataConfig(source=str(root), partition=method, vocab_size=400, seq_len=24, cache_dir=str(cache_dir))
    fd = prepare_federated_data(cfg, n_holders=3, seed=5, progress=False)
    train = windows(fd.holder_train, 24)
    assert len(fd.eval_global) > 20
    assert not any(tuple(r.tolist()) in train for r in fd.eval_global)
    # the check can fail: a training row is of course found among training windows
    assert tuple(fd.holder_train[0][0].tolist()) in train
    # the held-out documents do not depend on the seed or the partition
    other = prepare_federated_data(dataclasses.replace(cfg, partition="iid"), n_holders=2, seed=99, progress=False)
    assert torch.equal(other.eval_global, fd.eval_global)


def test_cached_run_is_identical_and_skips_tokenizing(small_config, tmp_path, monkeypatch):
    cfg = small_config(cache_dir=str(tmp_path / "cache"))
    first = prepare_federated_data(cfg, n_holders=2, seed=1, progress=False)
    assert list((tmp_path / "cache" / "tokens").glob("*.npz")) and list((tmp_path / "cache" / "tokenizers").iterdir())

    def no_encode(tokenizer, texts):
        raise AssertionError("tokenized again although cached")

    monkeypatch.setattr(pipemod, "_encode", no_encode)
    second = prepare_federated_data(cfg, n_holders=2, seed=1, progress=False)
    for a, b in zip(first.holder_train, second.holder_train, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(first.eval_global, second.eval_global)


def test_corpus_dir_round_trip_matches_stdlib(small_config, tmp_path):
    from securefed.training.data.corpus import collect_sources, write_corpus

    groups = collect_sources(["stdlib"], max_sources=4, max_bytes_per_source=40_000)
    write_corpus(groups, tmp_path / "corpus", inputs=["stdlib"], limits={})
    a = prepare_federated_data(small_config(), n_holders=2, seed=0, progress=False)
    b = prepare_federated_data(small_config(source=str(tmp_path / "corpus")), n_holders=2, seed=0, progress=False)
    assert a.manifest["content_hash"] == b.manifest["content_hash"]
    assert a.holder_sources == b.holder_sources
    assert all(torch.equal(x, y) for x, y in zip(a.holder_train, b.holder_train, strict=True))
    assert torch.equal(a.eval_global, b.eval_global)


def test_holder_paths_give_each_holder_its_own_data(tmp_path, cache_dir, write_tree):
    h0 = write_tree(tmp_path / "h0", {"docs": 1}, docs_per_source=6, seed=1)
    h1 = write_tree(tmp_path / "h1", {"docs": 1, "mail": 1}, docs_per_source=6, seed=2)
    cfg = DataConfig(holder_paths=(str(h0), str(h1)), vocab_size=400, seq_len=24, cache_dir=str(cache_dir))
    fd = prepare_federated_data(cfg, n_holders=2, seed=0, progress=False)
    assert fd.holder_sources == [("holder0:docs",), ("holder1:docs", "holder1:mail")]
    assert set(fd.eval_per_source) == {"holder0:docs", "holder1:docs", "holder1:mail"}
    assert fd.manifest["partition"]["method"] == "holder_paths"
    with pytest.raises(ValueError, match="lists 2 paths but n_holders is 3"):
        prepare_federated_data(cfg, n_holders=3, seed=0, progress=False)


def test_bad_input_errors(tmp_path, cache_dir, write_tree):
    def prep(n=2, **kw):
        kw.setdefault("vocab_size", 400)
        return prepare_federated_data(DataConfig(cache_dir=str(cache_dir), **kw), n_holders=n, seed=0, progress=False)

    with pytest.raises(DataError, match="does not exist"):
        prep(source=str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        prep(source=str(tmp_path / "empty"))
    (tmp_path / "tiny" / "a").mkdir(parents=True)
    (tmp_path / "tiny" / "a" / "x.txt").write_text("just a few words")
    with pytest.raises(DataError, match=r"tokens after tokenization, less than one sequence \(seq_len=128\)"):
        prep(source=str(tmp_path / "tiny"))
    small = write_tree(tmp_path / "small", {"a": 1, "b": 1}, docs_per_source=4, words=60)
    with pytest.raises(DataError, match="less than one sequence"):  # a holder's share is too short
        prep(n=2, source=str(small), seq_len=1024)
    with pytest.raises(DataError, match="2 source\\(s\\) for 3 holders"):
        prep(n=3, source=str(small), seq_len=16)
    with pytest.raises(ValueError, match="n_holders must be >= 1"):
        prep(n=0)


def test_config_loads_with_configio_and_validates():
    cfg = from_dict(DataConfig, {"source": "/data", "holder_paths": ["/a", "/b"], "max_sources": None,
                                 "partition": "dirichlet", "dirichlet_alpha": 1})  # fmt: skip
    assert cfg.holder_paths == ("/a", "/b") and cfg.max_sources is None and cfg.dirichlet_alpha == 1.0
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(DataConfig, {"seq_length": 64})
    with pytest.raises(ConfigError, match="'random' is not one of"):
        from_dict(DataConfig, {"partition": "random"})
    bad_values = [
        ({"eval_fraction": 1.0}, "eval_fraction must be in"),
        ({"seq_len": 1}, "seq_len must be >= 2"),
        ({"dirichlet_alpha": 0.0}, "dirichlet_alpha"),
        ({"max_sources": 0}, "max_sources"),
        ({"vocab_size": 100}, "vocab_size must be >= 260"),
        ({"source": ""}, "source must not be empty"),
        ({"holder_paths": ("a", " ")}, "holder_paths must not contain empty"),
        ({"max_bytes_per_source": 0}, "max_bytes_per_source must be >= 1"),
        ({"max_bytes_per_holder": 0}, "max_bytes_per_holder must be >= 1"),
    ]
    for bad, msg in bad_values:
        with pytest.raises(ValueError, match=msg):
            DataConfig(**bad)
    with pytest.raises(TypeError, match="seq_len must be an int"):
        DataConfig(seq_len=True)  # type: ignore[arg-type]
    uncapped = from_dict(DataConfig, {"max_bytes_per_source": None, "max_bytes_per_holder": None})  # null: no cap
    assert uncapped.max_bytes_per_source is None and uncapped.max_bytes_per_holder is None


# ------------------------------------------------------------------ caps are never silent (issue 16)
def test_holder_data_is_not_cut_by_the_pool_caps(tmp_path, cache_dir, write_tree):
    h0 = write_tree(tmp_path / "h0", {"notes": 3}, docs_per_source=12, words=300, seed=1)
    h1 = write_tree(tmp_path / "h1", {"mail": 3}, docs_per_source=12, words=300, seed=2)
    sizes = [sum(p.stat().st_size for p in h.rglob("*.txt")) for h in (h0, h1)]
    cap = min(sizes) // 3  # the demo's pool cap, far below each holder's data
    fd = prepare_federated_data(DataConfig(holder_paths=(str(h0), str(h1)), max_bytes_per_source=cap, max_sources=1,
                                           vocab_size=400, seq_len=24, cache_dir=str(cache_dir)),
                                n_holders=2, seed=0, progress=False)
    assert [s["bytes"] for s in fd.manifest["sources"].values()] == sizes  # all of it: 12 documents each
    assert fd.manifest["caps"]["applies_to"] == "holder_paths" and fd.manifest["caps"]["cut"] == {}


def test_a_holder_cap_is_stated_in_the_summary_line_and_the_manifest(tmp_path, cache_dir, write_tree, capsys):
    h0 = write_tree(tmp_path / "h0", {"notes": 3}, docs_per_source=12, words=300, seed=1)
    h1 = write_tree(tmp_path / "h1", {"mail": 3}, docs_per_source=12, words=300, seed=2)
    size0 = sum(p.stat().st_size for p in h0.rglob("*.txt"))
    cap = size0 // 2
    fd = prepare_federated_data(DataConfig(holder_paths=(str(h0), str(h1)), max_bytes_per_holder=cap,
                                           vocab_size=400, seq_len=24, cache_dir=str(cache_dir)),
                                n_holders=2, seed=0, progress=True)
    cut = fd.manifest["caps"]["cut"]
    assert set(cut) == {"holder0", "holder1"}
    used, avail = cut["holder0"]["bytes"]
    assert used <= cap < avail == size0 and cut["holder0"]["documents"][1] == 12 > cut["holder0"]["documents"][0]
    line = [x for x in capsys.readouterr().err.splitlines() if x.startswith("data: ") and "unigram ppl" in x][0]
    assert f"CAPPED by data.max_bytes_per_holder={cap}: holder0 " in line and "of 12 documents" in line
    assert "set data.max_bytes_per_holder=null" in line


def test_a_cut_source_directory_is_stated(tmp_path, cache_dir, write_tree, capsys):
    root = write_tree(tmp_path / "corpus", {"a": 3, "b": 3, "c": 3}, docs_per_source=8, words=300)
    fd = prepare_federated_data(DataConfig(source=str(root), max_sources=2, max_bytes_per_source=20_000,
                                           vocab_size=400, seq_len=24, cache_dir=str(cache_dir)),
                                n_holders=2, seed=0, progress=True)
    caps = fd.manifest["caps"]
    assert caps["applies_to"] == "source" and caps["sources_left_out"] == ["c"] and set(caps["cut"]) == {"a", "b"}
    err = capsys.readouterr().err
    assert "CAPPED data.source: 2 source(s) cut to data.max_bytes_per_source=20000" in err
    assert "1 source(s) left out by data.max_sources=2" in err


def test_a_source_whose_one_file_is_over_the_cap_is_said_cut_by_that_cap_also_in_an_error(tmp_path, cache_dir,
                                                                                            write_tree):
    """A reviewer's folder: a 29 MB export in one file beside two small notes. The default max_bytes_per_source cut
    the export's source to nothing; the run said only "1 training documents cannot be split among 3 holders", and the
    manifest blamed max_sources. Now the error names the cap, and the cap the manifest names is the one that cut."""
    root = write_tree(tmp_path / "corpus", {"b": 3, "c": 3}, docs_per_source=4, words=300)
    (root / "a").mkdir()
    (root / "a" / "export.txt").write_text("lorem ipsum dolor " * 3000)   # 54 kB: over the cap below
    cfg = dict(source=str(root), max_bytes_per_source=20_000, vocab_size=400, seq_len=24, cache_dir=str(cache_dir))
    fd = prepare_federated_data(DataConfig(**cfg), n_holders=2, seed=0, progress=False)
    caps = fd.manifest["caps"]
    assert caps["sources_left_out"] == [] and caps["cut"]["a"] == {"documents": [0, 1], "bytes": [0, 54_000]}
    with pytest.raises(DataError, match=r"cannot be split among 9 holders \(CAPPED data.source: 3 source\(s\) cut to "
                                        r"data.max_bytes_per_source=20000"):
        prepare_federated_data(DataConfig(**cfg), n_holders=9, seed=0, progress=False)


def test_the_stdlib_demo_caps_are_stated(small_config, capsys):
    fd = prepare_federated_data(small_config(), n_holders=2, seed=0, progress=True)
    caps = fd.manifest["caps"]
    assert caps["applies_to"] == "stdlib" and len(caps["sources_left_out"]) > 0 and caps["cut"]
    assert all(c["bytes"][0] <= 40_000 < c["bytes"][1] for c in caps["cut"].values())
    assert "demo caps on the stdlib corpus" in capsys.readouterr().err
