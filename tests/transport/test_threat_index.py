"""threat_models/transport_index.yaml is well formed, covers every TR-id of transport.md, and every test it names exists."""

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _tests_in(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name.startswith("test_")}


def test_transport_threat_index():
    data = yaml.safe_load((ROOT / "threat_models" / "transport_index.yaml").read_text())
    threats = data["threats"]
    ids = [t["id"] for t in threats]
    assert len(ids) == len(set(ids))
    missing = []
    for t in threats:
        assert set(t) == {"id", "title", "adversary", "mitigations", "tests"}, t["id"]
        assert t["mitigations"] and t["tests"], t["id"]
        for ref in t["tests"]:
            path, name = ref.split("::")
            assert path.startswith(("tests/", "audits/")), ref
            if not (ROOT / path).exists() or name not in _tests_in(ROOT / path):
                missing.append(ref)
    assert not missing, missing
    md = (ROOT / "threat_models" / "transport.md").read_text()
    assert set(re.findall(r"\*\*(TR-\d\d)", md)) == set(ids)
