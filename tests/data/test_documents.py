"""Local sources: directories, JSONL, Parquet, and one clear error per kind of bad input."""

from __future__ import annotations

import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from securefed.training.data import DataError, Document, content_hash, load_documents, select_documents
from securefed.training.data.documents import group_by_source


def test_directory_sources_are_top_level_subdirs_and_root_files(tmp_path):
    root = tmp_path / "corpus"
    (root / "news" / "2024").mkdir(parents=True)
    (root / "news" / "2024" / "a.md").write_text("# headline\nbody")
    (root / "code").mkdir()
    (root / "code" / "x.py").write_text("print(1)\n")
    (root / "code" / "notes.txt.gz").write_bytes(gzip.compress(b"zipped notes"))
    (root / "code" / "README").write_text("no suffix, still text")
    (root / "code" / "blob.bin").write_bytes(b"\x00\x01")  # unknown suffix: not read
    (root / "code" / "core").write_bytes(b"\x7fELF\x00")  # no suffix and not text: left out (and said)
    (root / "top.rst").write_text("root level")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "h.txt").write_text("hidden")
    docs = load_documents(root)
    assert [d.doc_id for d in docs] == [
        "code/README", "code/notes.txt", "code/x.py", "corpus/top.rst", "news/2024/a.md",
    ]  # fmt: skip
    assert {d.source for d in docs} == {"code", "corpus", "news"}
    assert next(d for d in docs if d.doc_id == "code/notes.txt").text == "zipped notes"


def test_jsonl_text_field_and_source_field(tmp_path):
    p = tmp_path / "data.jsonl"
    rows = [{"body": "one", "source": "a"}, {"body": "two"}, {"body": "   "}, {"body": "three", "source": "a"}]
    p.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    docs = load_documents(p, text_field="body")
    assert [(d.source, d.text) for d in docs] == [("a", "one"), ("a", "three"), ("data", "two")]
    assert docs[0].doc_id == "a/data-0000001.txt"
    with pytest.raises(DataError, match=r"line 1: no text field 'text'.*\['body', 'source'\]"):
        load_documents(p)
    p.write_text('{"text": "ok"}\n{oops\n')
    with pytest.raises(DataError, match="line 2: not valid JSON"):
        load_documents(p)


def test_parquet_text_column_and_errors(tmp_path):
    p = tmp_path / "shard.parquet"
    pq.write_table(pa.table({"content": ["x y z", None, "w"], "source": ["s1", "s1", "s2"]}), p)
    docs = load_documents(p, text_field="content")
    assert [(d.source, d.text) for d in docs] == [("s1", "x y z"), ("s2", "w")]
    with pytest.raises(DataError, match=r"no text column 'text' \(columns: \['content', 'source'\]\)"):
        load_documents(p)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable Parquet file"):
        load_documents(bad)


def test_bad_paths_each_have_one_clear_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_documents(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is empty"):
        load_documents(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_bytes(b"")
    (tmp_path / "junk" / "b.txt").write_text("  \n")
    with pytest.raises(DataError, match=r"no readable documents .*2 empty or null entries"):
        load_documents(tmp_path / "junk")
    (tmp_path / "x.csvz").write_text("a")
    with pytest.raises(DataError, match="expected a directory, a .jsonl or a .parquet"):
        load_documents(tmp_path / "x.csvz")
    with pytest.raises(TypeError, match="path"):
        load_documents(3)  # type: ignore[arg-type]


def test_select_caps_bytes_with_whole_documents_and_limits_sources():
    def doc(src, i, n):
        return Document(f"{src}/{i}", src, "x" * n)

    groups = group_by_source([doc("a", 0, 60), doc("a", 1, 50), doc("a", 2, 40), doc("b", 0, 500), doc("c", 0, 5)])
    out = select_documents(groups, max_sources=2, max_bytes_per_source=100)
    # a: 60 fits, 50 would exceed 100 (skipped), 40 fits; b: nothing fits -> dropped; c kept as 2nd
    assert {s: [d.doc_id for d in ds] for s, ds in out.items()} == {"a": ["a/0", "a/2"], "c": ["c/0"]}


def test_content_hash_sees_text_ids_and_order():
    a, b = Document("s/a", "s", "one"), Document("s/b", "s", "two")
    h = content_hash([a, b])
    assert h == content_hash([Document("s/a", "s", "one"), Document("s/b", "s", "two")])
    assert h != content_hash([b, a])
    assert h != content_hash([a, Document("s/b", "s", "two!")])
    assert h != content_hash([a, Document("s/c", "s", "two")])
