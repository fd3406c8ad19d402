"""`securefed corpus build | inspect | tokenizer` through its argparse registration."""

from __future__ import annotations

import argparse
import json

import pytest
from transformers import AutoTokenizer

from securefed.commands import corpus as cmd


def run(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="securefed")
    cmd.register(parser.add_subparsers())
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_build_then_inspect(tmp_path, cache_dir, capsys, write_tree):
    other = write_tree(tmp_path / "docs", {"guide": 1, "faq": 1}, docs_per_source=2, words=50)
    out = tmp_path / "corpus"
    assert run("corpus", "build", str(out), "--from", "stdlib", "--from", str(other),
               "--max-sources", "2", "--max-bytes-per-source", "20000") == 0  # fmt: skip
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["sources"]) == ["asyncio", "email", "faq", "guide"]
    assert manifest["python_version"] and len(manifest["content_hash"]) == 64
    assert (out / "faq" / "doc00.txt").is_file() and any((out / "asyncio").rglob("*.py"))
    capsys.readouterr()
    assert run("corpus", "inspect", str(out), "--vocab-size", "512", "--cache-dir", str(cache_dir)) == 0
    text = capsys.readouterr().out
    for name in ("asyncio", "email", "faq", "guide", "total", "tokens", "matches"):
        assert name in text
    (out / "faq" / "doc00.txt").write_text("edited after the build")
    run("corpus", "inspect", str(out), "--vocab-size", "512", "--cache-dir", str(cache_dir))
    assert "DIFFERS" in capsys.readouterr().out


def test_build_refuses_to_overwrite_and_reports_bad_paths(tmp_path, capsys):
    out = tmp_path / "c"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert run("corpus", "build", str(out), "--max-bytes-per-source", "5000", "--max-sources", "1") == 2
    assert "exists and is not empty" in capsys.readouterr().err and (out / "keep.txt").exists()
    assert run("corpus", "build", str(out), "--overwrite", "--max-bytes-per-source", "5000", "--max-sources", "1") == 0
    assert not (out / "keep.txt").exists() and (out / "manifest.json").exists()
    assert run("corpus", "inspect", str(tmp_path / "missing")) == 2
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run("corpus", "build", str(out), "--max-sources", "0")


def test_tokenizer_command_saves_an_autotokenizer(tmp_path, write_tree):
    public = write_tree(tmp_path / "public", {"a": 1}, docs_per_source=3, words=300)
    assert run("corpus", "tokenizer", str(tmp_path / "tok"), "--from", str(public), "--vocab-size", "300") == 0
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "tok"), local_files_only=True)
    assert len(tok) == 300 and tok.eos_token == "<|endoftext|>"
    assert tok.decode(tok("kappa12 beta7")["input_ids"]) == "kappa12 beta7"
