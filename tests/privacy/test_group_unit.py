"""DP-SGD with all of one person's documents as the privacy unit (train.dp_sgd.unit: group, data.unit_field;
protocols/dp.md §10.2): a patient with several notes is one record, not several.

Properties: the loaders read the id field and refuse records without one; a group's documents get rows of their
own, side by side; through the trainer's DP-SGD step (noise 0) removing one person's documents moves the clipped
sum by at most C; a run through the CLI signs, verifies and reports the unit and counts groups for δ.
"""

from __future__ import annotations

import json
import sysconfig
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from securefed.federation.data import document_rows, record_counts  # noqa: E402
from securefed.training.config import DPSGDConfig  # noqa: E402
from securefed.training.data.documents import DataError, content_hash, load_documents  # noqa: E402
from tests.privacy.test_document_unit import _clipped_sum  # noqa: E402


def _jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_the_loaders_read_the_id_of_whom_each_record_is_about_and_refuse_records_without_one(tmp_path):
    p = _jsonl(tmp_path / "notes.jsonl", [{"text": "a b c", "patient": "p1"}, {"text": "d e", "patient": 7}])
    docs = load_documents(p, unit_field="patient")
    assert [d.group for d in docs] == ["p1", "7"]
    assert [d.group for d in load_documents(p)] == [None, None]
    assert content_hash(load_documents(p)) != content_hash(docs)          # the grouping is part of the corpus
    for bad, msg in (({"text": "x"}, "no unit field 'patient'"), ({"text": "x", "patient": None}, "must be a non-empty"),
                     ({"text": "x", "patient": True}, "must be a non-empty"), ({"text": "x", "patient": ""}, "must be")):
        q = _jsonl(tmp_path / "bad.jsonl", [{"text": "ok", "patient": "p"}, bad])
        with pytest.raises(DataError, match=f"bad.jsonl, line 2: .*{msg}"):
            load_documents(q, unit_field="patient")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("some text")
    with pytest.raises(DataError, match="is a directory: data.unit_field"):
        load_documents(tmp_path / "d", unit_field="patient")
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["u v w", "x y"], "pid": ["a", "b"]}), tmp_path / "n.parquet")
    assert [d.group for d in load_documents(tmp_path / "n.parquet", unit_field="pid")] == ["a", "b"]
    with pytest.raises(DataError, match="no unit column 'patient'"):
        load_documents(tmp_path / "n.parquet", unit_field="patient")


class _Tok:
    eos_token_id = 1


class _FD:
    def __init__(self, docs, groups):
        self.holder_documents, self.holder_groups, self.tokenizer = [docs], [groups], _Tok()
        self.holder_train = [torch.zeros((1, 12), dtype=torch.long)]
        self.manifest = {"caps": {"applies_to": "holder_paths", "cut": {}, "sources_left_out": []}}


T, V, C = 12, 64, 1e-3


def test_one_persons_documents_are_one_unit_and_removing_them_moves_the_clipped_sum_by_at_most_c():
    gen = np.random.default_rng(1)
    lens = [5, 2 * T + 3, 13, 7, T + 1, 3]
    groups = ["ann", "bob", "ann", "cy", "bob", "ann"]
    docs = [gen.integers(2, V, size=n) for n in lens]
    rows, units = document_rows(_FD(docs, groups), 0, seq_len=T, max_rows=None, by_group=True)
    assert torch.bincount(units).tolist() == [1 + 2 + 1, 3 + 2, 1]        # ann: docs 0, 2, 5; bob: 1, 4; cy: 3
    rows_n, units_n = record_counts(_FD(docs, groups), n_holders=1, seq_len=T,
                                    dp_sgd=DPSGDConfig(enabled=True, unit="group"))
    assert rows_n == [len(rows)] and units_n == [3]
    scale = (1.0 / torch.bincount(units).double())[units].float()
    for clipping in ("per_sample", "ghost"):
        full = _clipped_sum(clipping, rows, scale, C)
        for j in range(3):
            keep = units != j
            moved = float((full - _clipped_sum(clipping, rows[keep], scale[keep], C)).norm())
            assert moved <= C * (1 + 1e-4), (clipping, j, moved / C)
        # per document instead (ann's three documents as three records): removing ann moves it by more than C
        _, per_doc = document_rows(_FD(docs, groups), 0, seq_len=T, max_rows=None, by_group=False)
        doc_scale = (1.0 / torch.bincount(per_doc).double())[per_doc].float()
        docs_full = _clipped_sum(clipping, document_rows(_FD(docs, groups), 0, seq_len=T, max_rows=None)[0], doc_scale, C)
        ann = torch.tensor([g == "ann" for g in groups])[per_doc]
        rest = document_rows(_FD(docs, groups), 0, seq_len=T, max_rows=None)[0][~ann]
        assert float((docs_full - _clipped_sum(clipping, rest, doc_scale[~ann], C)).norm()) > 1.5 * C


def test_unit_group_without_ids_is_one_clear_error():
    with pytest.raises(DataError, match="unit=group needs data.unit_field"):
        document_rows(_FD([np.arange(2, 20)], [None]), 0, seq_len=T, max_rows=None, by_group=True)


def test_a_group_level_run_through_the_cli_signs_verifies_and_reports_its_unit(tmp_path, fed_cache, capsys):
    from securefed.cli import main

    # a JSONL corpus of "notes": stdlib modules cut into pieces, each piece about one of 24 people
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.read_text(encoding="utf-8", errors="replace") for p in sorted(stdlib.glob("[a-m]*.py"))[:12]]
    notes = [t[i:i + 1500] for t in texts for i in range(0, min(len(t), 12000), 1500)]
    corpus = _jsonl(tmp_path / "notes.jsonl", [{"text": n, "patient": f"p{i % 24}", "source": f"ward{i % 4}"}
                                              for i, n in enumerate(notes) if n.strip()])
    run = tmp_path / "run"
    over = ["data.vocab_size=512", "data.seq_len=32", f"data.cache_dir={fed_cache}", f"data.source={corpus}",
            "data.unit_field=patient", "data.partition=iid", "data.max_bytes_per_source=null", "train.local_steps=2",
            "train.batch_size=4", "train.warmup_steps=1", "train.eval_batch_size=64", "federation.rounds=2",
            "federation.eval_every=1", "baseline=false", "deterministic_secrets=true", "train.dp_sgd.enabled=true",
            "train.dp_sgd.delta=1.0e-3", "train.dp_sgd.unit=group", "train.dp_sgd.sample_rate=0.05"]
    assert main(["simulate", "--out", str(run)] + [a for o in over for a in ("--set", o)]) == 0
    out = capsys.readouterr()
    assert "per group of documents sharing a data.unit_field value" in out.out + out.err
    man = json.loads((run / "holders" / "1" / "data_manifest.json").read_text())["holders"][0]
    assert man["dp_sgd_unit"]["unit"] == "group" and 1 <= man["dp_sgd_unit"]["groups"] <= 24
    own = [json.loads(x) for x in (run / "holders" / "1" / "ledger.jsonl").read_text().splitlines()]
    rl = [e["record_level"] for e in own if e.get("status") == "released"]
    assert rl and all(r["unit"] == "group" and r["history"][0][1] == 0.05 for r in rl)
    assert all(r["unit_field"] == "patient" for r in rl)          # the grouping field is signed with each release
    assert main(["verify", str(run)]) == 0
    # the report's words for the signed unit, with its grouping field (PV-54)
    assert "(add/remove neighbours, one group of documents sharing a patient value (e.g. one patient); recomputed" \
        in capsys.readouterr().out
    assert main(["report", str(run)]) == 0
    text = (run / "report" / "report.md").read_text()
    assert "one record = all of a holder's documents with the same patient value" in text and "| group |" in text
    assert "groups" in text and "The sampling rate q = 0.05 is public" in text


def test_unit_group_without_a_unit_field_is_refused_before_anything_runs(tmp_path, capsys):
    from securefed.cli import main

    code = main(["simulate", "--out", str(tmp_path / "r"), "--set", "train.dp_sgd.enabled=true",
                 "--set", "train.dp_sgd.unit=group"])
    assert code == 2 and "unit=group needs data.unit_field" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_the_readmes_holder_config_is_a_valid_group_level_config(tmp_path):
    """The README's holder.yaml (a patient-level DP-SGD holder) loads as it is written."""
    from securefed.federation.holder_config import load_holder_config

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = next(b.split("```", 1)[0] for b in readme.split("```yaml\n")[1:] if b.startswith("holder_id: 3"))
    y = tmp_path / "holder.yaml"
    y.write_text(block)
    cfg = load_holder_config(y)
    assert cfg.dp_sgd.unit == "group" and cfg.data.unit_field == "patient_id" and cfg.dp_sgd.sample_rate == 0.002


def test_ids_that_differ_only_in_unicode_form_or_surrounding_spaces_are_one_person(tmp_path):
    """A review: NFC "é" and NFD "é", and " p1" and "p1", were two groups (two records for one person)."""
    p = _jsonl(tmp_path / "n.jsonl", [{"text": "a b", "pid": "Jos\u00e9"}, {"text": "c d", "pid": "Jose\u0301"},
                                       {"text": "e f", "pid": " p1 "}, {"text": "g h", "pid": "p1"}])
    groups = [d.group for d in load_documents(p, unit_field="pid")]
    assert groups[0] == groups[1] and groups[2] == groups[3] and groups[0] != groups[2]


def test_a_refused_id_is_not_echoed_into_the_error(tmp_path):
    """An id is the holder's data (a patient's name, say): the error names its kind and line, never its value."""
    p = _jsonl(tmp_path / "n.jsonl", [{"text": "a b", "pid": ["Jane Q. Patient"]}])
    with pytest.raises(DataError) as e:
        load_documents(p, unit_field="pid")
    assert "n.jsonl, line 1" in str(e.value) and "a list" in str(e.value) and "Jane" not in str(e.value)


def test_the_signed_grouping_field_may_not_change_and_is_only_a_field_name():
    """A release's record_level names the grouping field (never a value); a later release with another field, or a
    field under another unit, does not verify."""
    from securefed.privacy.holder_ledger import record_level_entry, record_level_problem

    def rel(seq, rl):
        return {"status": "released", "round": seq, "seq": seq, "record_level": rl}

    a = record_level_entry([[1.0, 0.05, 2]], 1e-4, unit="group", unit_field="patient")
    b = record_level_entry([[1.0, 0.05, 4]], 1e-4, unit="group", unit_field="patient")
    assert a["unit_field"] == "patient" and record_level_problem([rel(1, a), rel(2, b)]) is None
    c = record_level_entry([[1.0, 0.05, 4]], 1e-4, unit="group", unit_field="visit")
    assert "groups changed from data.unit_field 'patient' to 'visit'" in record_level_problem([rel(1, a), rel(2, c)])
    d = dict(record_level_entry([[1.0, 0.05, 2]], 1e-4, unit="document"), unit_field="patient")
    assert "only with unit group" in record_level_problem([rel(1, d)])
    assert "unit_field" not in record_level_entry([[1.0, 0.05, 2]], 1e-4, unit="document", unit_field="patient")
