"""What real institutions' data folders hold, read by load_documents: each file is read exactly, or is one
DataError naming the file and the fix — never skipped quietly (securefed/training/data/textfiles.py).

Found by a reviewer feeding securefed its own data: a folder of nine Latin-1 notes and one UTF-8 note
trained on the one (the run said "no held-out evaluation sequence", or nothing at all once two were
UTF-8); UTF-16 exports (Excel, SQL Server) were "empty"; two folders named in Japanese both became source
"source" and half their files were dropped as duplicates; a link to a file outside the folder was trained on;
a file name in Latin-1, a corrupt .jsonl.gz and a Parquet column of ints each ended in a traceback or a
message about "non-UTF-8 entries"."""

from __future__ import annotations

import gzip
import json
import logging
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from securefed.training.data import DataError, load_documents
from securefed.training.data.corpus import collect_sources

TEXT = "Patientin klagt über Übelkeit; Befund: café-au-lait, señor Müller.\r\nZweite Zeile.\n"


def _folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


@pytest.mark.parametrize("encoded", [
    TEXT.encode("utf-8"),
    b"\xef\xbb\xbf" + TEXT.encode("utf-8"),        # UTF-8 with a byte-order mark (Notepad, Excel "CSV UTF-8")
    TEXT.encode("utf-16"),                          # UTF-16 LE with its mark (Excel "Unicode text", SQL Server)
    b"\xfe\xff" + TEXT.encode("utf-16-be"),
    TEXT.encode("utf-32"),
], ids=["utf8", "utf8-bom", "utf16le", "utf16be", "utf32"])
def test_every_unicode_encoding_a_byte_order_mark_names_reads_as_the_same_text(tmp_path, encoded):
    docs = load_documents(_folder(tmp_path / "d", {"notes/a.txt": encoded, "notes/b.csv.gz": gzip.compress(encoded)}))
    assert [d.text for d in docs] == [TEXT, TEXT]   # exact: the mark dropped, CRLF kept, nothing else changed


@pytest.mark.parametrize("name, data, message", [
    ("n3.txt", TEXT.encode("latin-1"), r"n3.txt: not UTF-8 text \(byte 0xfc at offset 16; Latin-1 / Windows-1252\?\); "
                                       r"convert it to UTF-8 \(e.g. iconv -f WINDOWS-1252"),
    ("scan.txt", b"%PDF-1.4\x00\x01" * 50, r"scan.txt: holds NUL bytes \(a binary file, or UTF-16 without a byte-order"),
    ("old.txt.gz", b"\x1f\x8b\x08\x00 not gzip", r"old.txt.gz: not a valid gzip file"),
    ("cut.txt", b"\xff\xfe" + TEXT.encode("utf-16-le")[:-1], r"cut.txt: not UTF-16 text"),
])
def test_a_text_file_that_is_not_text_is_one_error_naming_it(tmp_path, name, data, message):
    root = _folder(tmp_path / "d", {f"notes/n{k}.txt": TEXT.encode() for k in range(3)} | {f"notes/{name}": data})
    with pytest.raises(DataError, match=message):
        load_documents(root)


def test_a_file_this_process_cannot_read_is_named_not_skipped(tmp_path, monkeypatch):
    root = _folder(tmp_path / "d", {"notes/a.txt": TEXT.encode(), "notes/locked.txt": TEXT.encode()})
    read = Path.read_bytes

    def denied(self):   # chmod 000 does not stop root, who runs the test-suite in CI
        if self.name == "locked.txt":
            raise PermissionError(13, "Permission denied")
        return read(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    with pytest.raises(DataError, match=r"locked.txt: cannot be read \(Permission denied\); give this process read"):
        load_documents(root)


def test_a_binary_without_a_suffix_is_left_out_and_said(tmp_path, caplog):
    root = _folder(tmp_path / "d", {"notes/a.txt": TEXT.encode(), "notes/README": b"readme", "notes/core": b"\x7fELF\x00"})
    with caplog.at_level(logging.WARNING):
        docs = load_documents(root)
    assert [d.doc_id for d in docs] == ["notes/README", "notes/a.txt"]
    assert "1 file(s) not read: notes/core (not text)" in caplog.text


def test_a_link_is_refused_file_or_directory_so_nothing_outside_the_folder_is_trained_on(tmp_path):
    """SYS-28: whoever may drop files into a shared data folder must not make the holder train on (and its model
    memorise) a file they cannot read themselves, such as the holder's own TLS key."""
    secret = tmp_path / "pki" / "key.pem"
    secret.parent.mkdir()
    secret.write_text("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA...\n")
    root = _folder(tmp_path / "d", {f"notes/n{k}.txt": TEXT.encode() for k in range(3)})
    (root / "notes" / "n9.txt").symlink_to(secret)
    with pytest.raises(DataError, match=rf"n9.txt is a symbolic link \(to {secret}\): securefed reads only the files "
                                        r"inside the data folder itself.*SYS-28"):
        load_documents(root)
    (root / "notes" / "n9.txt").unlink()
    (root / "lake").symlink_to(secret.parent)
    with pytest.raises(DataError, match=r"lake is a symbolic link"):
        load_documents(root)
    (root / "lake").unlink()
    (root / "notes" / "loop.txt").symlink_to(root / "notes" / "loop.txt")   # a loop: nothing to read at all
    with pytest.raises(DataError, match=r"loop.txt is a symbolic link"):
        load_documents(root)
    # a public tree for `securefed corpus build` (strict=False) reads as it did: file links followed
    (root / "notes" / "loop.txt").unlink()
    (root / "notes" / "n9.txt").symlink_to(root / "notes" / "n0.txt")
    assert len(collect_sources([str(root)], max_sources=None, max_bytes_per_source=10**9)["notes"]) == 4


def test_a_file_name_that_is_not_utf8_is_named_with_its_bytes(tmp_path):
    root = _folder(tmp_path / "d", {"notes/a.txt": TEXT.encode()})
    with open(os.path.join(os.fsencode(root / "notes"), b"Befund_M\xfcller.txt"), "wb") as fh:
        fh.write(TEXT.encode())
    with pytest.raises(DataError, match=r"notes/Befund_M\\xfcller.txt: its name is not UTF-8.*convmv"):
        load_documents(root)


def test_folder_names_of_any_script_stay_distinct_sources_and_a_collision_is_an_error(tmp_path):
    # before: both became source "source", and the second folder's files were dropped as "duplicates"
    root = _folder(tmp_path / "d", {f"{s}/note{k}.txt": f"{s} {k}".encode() for s in ("循環器", "消化器") for k in (1, 2)})
    docs = load_documents(root)
    assert sorted({d.source for d in docs}) == ["循環器", "消化器"] and len(docs) == 4
    _folder(root, {"Herz Notes/a.txt": b"one", "Herz_Notes/b.txt": b"two"})
    with pytest.raises(DataError, match=r"the folders 'Herz Notes' and 'Herz_Notes' both become source 'Herz_Notes'"):
        load_documents(root)
    # a file at the top and one in a folder named like the top: one id, two texts -> named, not one dropped
    top = _folder(tmp_path / "notes", {"a.txt": b"top", "notes/a.txt": b"inner", "b/x.txt": b"x"})
    with pytest.raises(DataError, match=r"notes/a.txt and .*notes/notes/a.txt both become document 'notes/a.txt'"):
        load_documents(top)


def test_jsonl_in_another_encoding_or_damaged_is_named_by_line(tmp_path):
    rows = [json.dumps({"text": f"record {k} {TEXT}"}, ensure_ascii=False) + "\n" for k in range(5)]
    p = tmp_path / "notes.jsonl"
    p.write_bytes("".join(rows[:2]).encode() + rows[2].encode("latin-1") + "".join(rows[3:]).encode())
    with pytest.raises(DataError, match=r"notes.jsonl, line 3: not UTF-8 \(byte 0xfc; Latin-1 / Windows-1252\?\)"):
        load_documents(p)
    for data in (b"\xef\xbb\xbf" + "".join(rows).encode(), "".join(rows).encode("utf-16")):
        p.write_bytes(data)
        assert [d.text for d in load_documents(p)] == [f"record {k} {TEXT}" for k in range(5)]
    gz = tmp_path / "notes.jsonl.gz"
    gz.write_bytes(gzip.compress("".join(rows).encode())[:-20])
    with pytest.raises(DataError, match=r"notes.jsonl.gz: not a valid gzip file, or one cut short"):
        load_documents(gz)


@pytest.mark.parametrize("value, kind", [(["para 1", "para 2"], "a list"), (12345, "an int"), ({"t": "x"}, "a dict")])
def test_a_jsonl_text_that_is_not_a_string_is_an_error_not_a_skipped_record(tmp_path, value, kind):
    p = tmp_path / "notes.jsonl"
    p.write_text(json.dumps({"text": "kept"}) + "\n" + json.dumps({"text": None}) + "\n" + json.dumps({"text": value}))
    with pytest.raises(DataError, match=rf"notes.jsonl, line 3: text field 'text' is {kind}, not a string"):
        load_documents(p)


@pytest.mark.parametrize("column, shown", [
    (pa.array([1, 2]), "int64"), (pa.array([b"x", b"y"]), "binary"), (pa.array([["x"], ["y"]]), "list<"),
    (pa.array(["x", "y"]).dictionary_encode(), None), (pa.array(["x", "y"], pa.large_string()), None),
])
def test_a_parquet_text_column_that_is_not_strings_is_named_with_its_type(tmp_path, column, shown):
    p = tmp_path / "notes.parquet"
    pq.write_table(pa.table({"text": column}), p)
    if shown is None:
        assert [d.text for d in load_documents(p)] == ["x", "y"]
    else:
        with pytest.raises(DataError, match=rf"text column 'text' holds {shown}.*, not strings"):
            load_documents(p)


def test_a_record_source_that_is_not_a_string_or_merges_with_another_is_an_error(tmp_path):
    """A JSONL `source` of 17 was ignored (the record went to the file's default source) and sources "Herz Notes"
    and "Herz_Notes" became one, quietly: the partition by source is what non-IID holders and the manifest see.
    A string source of any script is kept as it is; null or a missing field is the file's default."""
    def jsonl(name, records):
        p = tmp_path / name
        p.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        return p

    ok = load_documents(jsonl("ok.jsonl", [{"text": "a", "source": "循環器"}, {"text": "b", "source": None},
                                           {"text": "c"}, {"text": "d", "source": "Herz"}]))
    assert sorted({d.source for d in ok}) == ["Herz", "ok", "循環器"]
    with pytest.raises(DataError, match=r"num\.jsonl, line 2: field 'source' is an int, not a string"):
        load_documents(jsonl("num.jsonl", [{"text": "a", "source": "x"}, {"text": "b", "source": 17}]))
    with pytest.raises(DataError, match=r"merge\.jsonl, line 2: source 'Herz_Notes' and source 'Herz Notes' both "
                                        r"become source 'Herz_Notes'"):
        load_documents(jsonl("merge.jsonl", [{"text": "a", "source": "Herz Notes"}, {"text": "b", "source": "Herz_Notes"}]))
    table = pa.table({"text": ["a", "b"], "source": [1, 2]})
    pq.write_table(table, tmp_path / "ints.parquet")
    with pytest.raises(DataError, match=r"ints\.parquet, row 0: field 'source' is an int"):
        load_documents(tmp_path / "ints.parquet")
