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
    # --overwrite replaces only an earlier corpus: a folder with a user's file is refused, the file kept
    assert run("corpus", "build", str(out), "--overwrite", "--max-bytes-per-source", "5000", "--max-sources", "1") == 2
    assert "is not a corpus" in capsys.readouterr().err and (out / "keep.txt").read_text() == "x"
    (out / "keep.txt").unlink()
    assert run("corpus", "build", str(out), "--max-bytes-per-source", "5000", "--max-sources", "1") == 0  # empty: fine
    assert (out / "manifest.json").exists()
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


def test_build_and_tokenizer_say_one_line_each_in_a_pipe(tmp_path, capfd, write_tree):
    """Seen by a newcomer: `corpus build` wrapped its line at 80 columns mid-hash (rich's width where stdout
    is not a terminal), and `corpus tokenizer` printed bare newlines first (the tokenizers library's bars,
    written to the process's stdout by Rust). Now: one line each on stdout, whatever the path's length."""
    public = write_tree(tmp_path / "public", {"a": 1}, docs_per_source=3, words=300)
    out = tmp_path / ("a-long-folder-name-" * 5) / "corpus"
    assert run("corpus", "build", str(out), "--from", str(public)) == 0
    said = capfd.readouterr().out
    assert said.count("\n") == 1 and said.startswith(f"wrote {out}: 1 sources") and "(content hash " in said
    assert run("corpus", "tokenizer", str(tmp_path / "tok"), "--from", str(public), "--vocab-size", "300") == 0
    said = capfd.readouterr()
    assert said.out.splitlines() == [f"saved a 300-token byte-level BPE trained on 3 public documents to {tmp_path / 'tok'}"]
    assert "training a 300-token byte-level BPE on 3 public documents" in said.err


def _tree(root):
    return {str(p.relative_to(root)): (None if p.is_dir() else p.read_bytes()) for p in sorted(root.rglob("*"))}


def _build(out, src, *more):
    return run("corpus", "build", str(out), "--from", str(src), *more)


def test_overwrite_refuses_a_folder_that_is_not_a_corpus(tmp_path, capsys, write_tree):
    src = write_tree(tmp_path / "docs", {"guide": 1}, docs_per_source=2, words=20)
    home = tmp_path / "home"
    (home / "photos").mkdir(parents=True)
    (home / "photos" / "a.jpg").write_bytes(b"\xff\xd8")
    (home / "manifest.json").write_text('{"format": "something else", "sources": {}}')   # not this command's manifest
    (tmp_path / "file.txt").write_text("a user's file")
    before = _tree(tmp_path)
    for target, said in ((home, "is not a corpus"), (src, "is not a corpus"), (tmp_path / "file.txt", "is a file")):
        assert _build(target, src, "--overwrite") == 2, target
        assert said in capsys.readouterr().err
    assert _build(tmp_path / "file.txt", src) == 2 and "is a file" in capsys.readouterr().err
    assert _tree(tmp_path) == before   # every file still there; no temporary folder left behind


def test_overwrite_replaces_an_earlier_corpus_only(tmp_path, capsys, write_tree):
    src = write_tree(tmp_path / "docs", {"guide": 1, "faq": 1}, docs_per_source=2, words=20)
    out = tmp_path / "corpus"
    assert _build(out, src) == 0
    assert _build(out, src) == 2 and "pass --overwrite" in capsys.readouterr().err   # without --overwrite: kept
    (out / "faq" / "doc00.txt").write_text("edited")
    (tmp_path / ".corpus.old").mkdir()              # the name the old code cleared for its swap: a user's folder now
    (tmp_path / ".corpus.old" / "keep.txt").write_text("a user's file")
    assert _build(out, src, "--overwrite") == 0                                        # an earlier corpus: replaced
    assert (out / "faq" / "doc00.txt").read_text() != "edited" and (out / "manifest.json").is_file()
    assert (tmp_path / ".corpus.old" / "keep.txt").read_text() == "a user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".corpus.old", "corpus", "docs"]   # no temporary folder
    (out / "my-notes.txt").write_text("a user's file")                                 # a corpus plus a user's file
    before = _tree(tmp_path)
    assert _build(out, src, "--overwrite") == 2 and "is not a corpus" in capsys.readouterr().err
    assert _tree(tmp_path) == before
