"""A holder's own records are never copied into the token cache (threat_models/system.md SYS-29).

Found by the secrets review (2026-12): `securefed client` and `simulate` with a holder's JSONL wrote the token ids
of every record to ~/.cache/securefed/tokens/<hash>.npz, outside the holder's state directory, kept after the data
is deleted; the public tokenizer decodes them back to the notes (the review decoded "CANARYNOTE-1-0-0 …" from it).
"""

from __future__ import annotations

import json

import numpy as np

from securefed.training.data import DataConfig, prepare_federated_data


def _files(root):
    return [p for p in root.rglob("*") if p.is_file()]


def test_a_holders_own_records_leave_no_token_ids_in_the_cache(tmp_path):
    # the public tokenizer comes from the session cache (it is trained on stdlib only); this run's cache is new
    cache = tmp_path / "cache"
    secret = "CANARYNOTE patient ZQX0042 diagnosed with qvzjk blorft"
    paths = []
    for h in range(2):
        p = tmp_path / f"h{h}.jsonl"
        p.write_text("".join(json.dumps({"patient_id": f"ZQX{h}{i:03d}", "text": f"{secret} {h} {i} " + "word " * 80})
                             + "\n" for i in range(30)))
        paths.append(str(p))
    cfg = DataConfig(source="jsonl", holder_paths=tuple(paths), unit_field="patient_id", vocab_size=400, seq_len=24,
                     cache_dir=str(cache))
    fd = prepare_federated_data(cfg, n_holders=2, seed=0, progress=False)
    assert sum(len(r) for r in fd.holder_train) > 0

    ids = fd.tokenizer(secret, add_special_tokens=False)["input_ids"]
    needles = [np.asarray(ids, dtype=dt).tobytes() for dt in ("<i4", "<i8", "<u2", ">i4")] + [secret.encode()]
    written = _files(cache)
    assert written, "the public tokenizer is cached"   # the cache works, for public things
    assert not list(cache.rglob("tokens/*")), [str(p) for p in cache.rglob("tokens/*")]
    for p in written:
        data = p.read_bytes()
        assert not any(n in data for n in needles), p

    # the public stdlib corpus is still cached (what the cache is for)
    pub = prepare_federated_data(DataConfig(max_sources=2, max_bytes_per_source=20_000, vocab_size=400, seq_len=24,
                                            cache_dir=str(cache)), n_holders=2, seed=0, progress=False)
    assert pub.holder_train and list(cache.glob("tokens/*.npz"))


def test_a_local_corpus_is_cached_only_when_marked_public(tmp_path):
    """data.token_cache (default false) marks a local data.source public, so its token ids may be cached: what the GPU
    study's corpus needs (its rows reuse one tokenization). Unmarked, or as data.holder_paths, nothing is cached."""
    corpus = tmp_path / "pile"
    for s in range(2):
        d = corpus / f"src{s}"
        d.mkdir(parents=True)
        for j in range(4):
            (d / f"f{j}.txt").write_text(f"public text {s} {j} " + "lorem ipsum dolor sit amet " * 60)
    base = dict(source=str(corpus), max_sources=None, vocab_size=400, seq_len=24)
    for marked, holder_paths, cached in ((False, (), False), (True, (), True),
                                         (True, (str(corpus / "src0"), str(corpus / "src1")), False)):
        cache = tmp_path / f"cache-{marked}-{bool(holder_paths)}"
        cfg = DataConfig(**base, token_cache=marked, holder_paths=holder_paths, cache_dir=str(cache))
        prepare_federated_data(cfg, n_holders=2, seed=0, progress=False)
        assert bool(list(cache.glob("tokens/*"))) is cached, (marked, holder_paths)
