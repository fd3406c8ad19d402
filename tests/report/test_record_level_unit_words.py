"""The record-level mechanism words state a document-level guarantee only where the holders' signed releases
say their steps ran per document (protocols/dp.md §10.2; a review of 7359c1f).

In network mode config.yaml is the coordinator's: each holder trains with its own holder.yaml's dp_sgd (the
holder replaces the run's train.dp_sgd with its own), so a coordinator config with unit=document said "one record
= one document ... one document moves the clipped sum by at most C" while the holders' verified ledgers said
they ran per training sequence (where a document of k rows moves it by up to k·C).
"""

from __future__ import annotations

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
