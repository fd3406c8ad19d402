"""Replay the frozen golden file of our own constructions (protocols/vectors/secagg_golden.json)."""

import importlib.util
import json
from pathlib import Path

VECTORS = Path(__file__).resolve().parents[2] / "protocols" / "vectors"


def test_golden_vectors_unchanged():
    spec = importlib.util.spec_from_file_location("secagg_make_golden", VECTORS / "secagg_make_golden.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    frozen = json.loads((VECTORS / "secagg_golden.json").read_text())
    assert mod.compute() == frozen
    # the frozen round's total is the plain sum: sum_i i*arange(8) = 10*arange(8)
    assert frozen["round"]["total"] == [10 * k for k in range(8)]
