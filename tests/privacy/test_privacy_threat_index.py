"""threat_models/privacy_index.yaml is well formed, every PV threat in privacy.md is indexed, every test exists."""

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _functions(path: Path) -> set[str]:
    return {n.name for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.FunctionDef)}


def test_privacy_index_is_complete_and_its_tests_exist():
    data = yaml.safe_load((ROOT / "threat_models" / "privacy_index.yaml").read_text())
    threats = data["threats"]
    ids = [t["id"] for t in threats]
    assert len(ids) == len(set(ids))
    md = (ROOT / "threat_models" / "privacy.md").read_text()
    in_md = {line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| PV-")}
    assert in_md and in_md == set(ids)
    missing = []
    for t in threats:
        assert {"id", "title", "adversary", "mitigations", "tests"} <= set(t) and t["mitigations"] and t["tests"]
        for ref in t["tests"]:
            file, _, name = ref.partition("::")
            p = ROOT / file
            if not p.is_file() or name not in _functions(p):
                missing.append(f"{t['id']}: {ref}")
    assert not missing, missing
