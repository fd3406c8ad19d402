"""threat_models/ckks_index.yaml and protocols/ckks.md §8 name tests that exist; every CK threat is indexed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _missing(refs: list[str]) -> list[str]:
    out = []
    for ref in refs:
        file, _, name = ref.partition("::")
        p = ROOT / file
        if not p.is_file() or name.split("[")[0] not in _functions(p):
            out.append(ref)
    return out


def test_ckks_threat_index_structure_and_tests_exist():
    data = yaml.safe_load((ROOT / "threat_models" / "ckks_index.yaml").read_text())
    threats = data["threats"]
    ids = [t["id"] for t in threats]
    assert len(ids) == len(set(ids)) and all(i.startswith("CK-") for i in ids)
    for t in threats:
        assert set(t) == {"id", "title", "adversary", "mitigations", "tests"}, t["id"]
        assert t["mitigations"] and t["tests"], t["id"]
    assert not _missing([ref for t in threats for ref in t["tests"]])
    md = (ROOT / "threat_models" / "ckks.md").read_text()
    in_md = {line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| CK-")}
    assert in_md == set(ids)


def test_spec_must_rule_table_names_existing_tests():
    spec = (ROOT / "protocols" / "ckks.md").read_text()
    section = spec.split("## 8.")[1].split("## 9.")[0]
    refs = []
    for cell in re.findall(r"`([^`]+)`", section):
        if "::" in cell:
            file = cell.split("::")[0]
            if not file.startswith("tests/"):
                file = "tests/ckks/" + file if file else last
            last = file
            refs.append(f"{file}::{cell.split('::')[1]}")
    assert len(refs) >= 20 and not _missing(refs)
