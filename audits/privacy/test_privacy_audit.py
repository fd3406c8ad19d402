"""The empirical privacy audit's parts: the SNJ bound, the one-run audit through the real DP encoders,
and the Secret Sharer exposure metric. The end-to-end LM run is in tests/audits (quick profile)."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from securefed.audit.exposure import CanarySet, exposure, insert_canaries
from securefed.audit.one_run import one_run_audit, snj_lower_bound


def test_snj_bound_matches_the_binomial_tail_by_hand():
    # all r = 100 guesses right at β = 0.05: p^100 = 0.05 → p = 0.05^(1/100) = 0.97049 → ε = ln(p/(1-p)) = 3.4925
    p = 0.05 ** (1 / 100)
    assert snj_lower_bound(100, 100, beta=0.05) == pytest.approx(math.log(p / (1 - p)), abs=1e-6)
    assert snj_lower_bound(50, 100, beta=0.05) == 0.0           # coin flipping proves nothing
    assert snj_lower_bound(100, 100, beta=0.05, delta=1e-3) < snj_lower_bound(100, 100, beta=0.05)
    with pytest.raises(ValueError):
        snj_lower_bound(5, 4, beta=0.05)


def test_one_run_audit_detects_no_dp_and_stays_below_the_accountant_with_dp():
    none = one_run_audit(mode="none", canaries=200, dim=2048, rounds=2)
    dp = one_run_audit(mode="central", target_epsilon=2.0, canaries=200, dim=2048, rounds=2)
    assert none.best_correct == none.best_guesses and none.epsilon_lower_bound > 2.5   # every guess right
    assert math.isinf(none.accountant_epsilon)
    assert dp.accountant_epsilon == pytest.approx(2.0, rel=0.02)
    assert dp.epsilon_lower_bound < dp.accountant_epsilon < none.epsilon_lower_bound


class _Oracle(torch.nn.Module):
    """A 'model' that puts almost all mass on ``secret`` after ``prefix``: exposure must be maximal."""

    def __init__(self, vocab: int, prefix, secret):
        super().__init__()
        self.vocab, self.seq = vocab, list(prefix) + list(secret)

    def forward(self, input_ids):
        b, t = input_ids.shape
        logits = torch.zeros(b, t, self.vocab)
        for pos in range(t - 1):
            if pos + 1 < len(self.seq):
                logits[:, pos, self.seq[pos + 1]] = 20.0
        return type("Out", (), {"logits": logits})()


def test_exposure_is_maximal_for_a_memorised_secret_and_small_for_controls():
    alphabet = tuple(range(10, 20))
    c = CanarySet(prefix=(1, 2, 3), alphabet=alphabet, inserted=((11, 12, 13),), control=((14, 15, 16),))
    e = exposure(_Oracle(32, c.prefix, c.inserted[0]), c)
    assert e["space_bits"] == pytest.approx(math.log2(1000))
    assert e["inserted"][0] == pytest.approx(e["space_bits"])     # rank 1 of 1000
    assert e["control"][0] < 3.0                                   # control secret is not favoured


def test_insert_canaries_writes_the_canary_into_the_chosen_holders_rows_only():
    @dataclasses.dataclass(frozen=True)
    class Data:
        holder_train: list
        holder_documents: list

    rows = [torch.zeros(40, 16, dtype=torch.long), torch.zeros(40, 16, dtype=torch.long)]
    c = CanarySet(prefix=(5, 6), alphabet=tuple(range(10)), inserted=((1, 2, 3), (4, 5, 6)), control=((7, 8, 9),))
    out = insert_canaries(Data(rows, [["per-document ids without the canaries"]] * 2), c, holder=0, rows_per_canary=5)
    assert out.holder_documents == []       # a document-unit DP-SGD holder refuses rather than train without them
    hits = [tuple(r[:5].tolist()) for r in out.holder_train[0]]
    assert hits.count((5, 6, 1, 2, 3)) == 5 and hits.count((5, 6, 4, 5, 6)) == 5
    assert torch.equal(out.holder_train[1], rows[1]) and torch.equal(rows[0], torch.zeros(40, 16, dtype=torch.long))
    assert not any(h[2:] == (7, 8, 9) for h in hits)
