"""The record-level mechanism words state a document-level guarantee only where the holders' signed releases
say their steps ran per document (protocols/dp.md §10.2; a review of 7359c1f).

In network mode config.yaml is the coordinator's: each holder trains with its own holder.yaml's dp_sgd (the
holder replaces the run's train.dp_sgd with its own), so a coordinator config with unit=document said "one record
= one document ... one document moves the clipped sum by at most C" while the holders' verified ledgers said
they ran per training sequence (where a document of k rows moves it by up to k·C).
"""

from __future__ import annotations

import pytest

from securefed.report.record_level import mechanism_words

SGD = {"enabled": True, "noise_multiplier": 1.0, "max_grad_norm": 1.0, "delta": 1e-5, "clipping": "per_sample"}


def _facts(config_unit: str, signed: dict[str, str]) -> dict:
    rl = {h: {"epsilon": 1.0, "delta": 1e-5, "steps": 4, "unit": u} for h, u in signed.items()}
    return {"dp_sgd": dict(SGD, unit=config_unit), "record_level": rl, "deterministic_secrets": False, "seed": 0}


def test_a_document_level_mechanism_is_not_stated_for_holders_that_signed_per_sequence_steps():
    words = mechanism_words(_facts("document", {"1": "sequence", "2": "document"}))
    assert "one record = one document" not in words and "moves the clipped sum by at most" not in words
    assert "holder-1 record DP-SGD steps per training sequence" in words
    words = mechanism_words(_facts("document", {"1": "document", "2": "document"}))
    assert "one record = one document" in words                      # what every holder signed: stated
    words = mechanism_words(_facts("document", {}))                    # no release yet: the configuration
    assert "one record = one document" in words


def test_holders_that_signed_per_document_steps_are_named_under_a_sequence_config():
    words = mechanism_words(_facts("sequence", {"1": "document", "2": "sequence"}))
    assert "one record = one training sequence" in words and "holder-1 record their steps per document" in words
    assert "holder-2 record their steps per document" not in words


@pytest.mark.parametrize("unit, field, record", [
    ("sequence", None, "one training sequence (a packed row)"),
    ("document", None, "one document"),
    ("group", "patient_id", "one group of documents sharing a patient_id value (e.g. one patient)")])
def test_the_nist_unit_and_relation_rows_name_the_record_the_holders_signed(unit, field, record):
    """PV-53: a document-unit run's NIST table said the unit of privacy was "one training record inside a holder" and
    the relation "add/remove one training record" (a compliance review's run: unit=document, ghost clipping, hidden
    batch size), while its Mechanism said one record = one document and its signed releases name the unit; a group
    run read the same. The rows now name the record the holders' verified releases sign."""
    from securefed.report.text import relation_words, unit_words

    rl = {"1": {"epsilon": 1.07, "delta": 1e-3, "steps": 6, "unit": unit, "unit_field": field, "padded_rows": 64}}
    f = {"dp_sgd": {"enabled": True, "unit": unit, "unit_field": field}, "record_level": rl,
         "neighbouring_relation": None, "sampling": "fixed"}
    assert unit_words(f, False, True).startswith(f"one record inside a holder (record-level DP-SGD): {record};")
    assert relation_words(f, False, True).endswith(f"record level: add/remove one record, {record} (Poisson batches)")
    assert "training record" not in unit_words(f, True, True) + relation_words(f, False, True)
    # holders that signed different units are named one by one
    rl["2"] = dict(rl["1"], unit="sequence" if unit != "sequence" else "document", unit_field=None)
    assert "holder-1: " + record in unit_words(f, False, True) and "holder-2: one " in unit_words(f, False, True)
