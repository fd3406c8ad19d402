"""threat_models/index.yaml is well formed and every test it names exists."""

import ast
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_index_structure_and_tests_exist():
    data = yaml.safe_load((ROOT / "threat_models" / "index.yaml").read_text())
    assert isinstance(data, dict) and isinstance(data.get("threats"), list)
    ids = [t["id"] for t in data["threats"]]
    assert len(ids) == len(set(ids)), "duplicate threat ids"
    missing = []
    for t in data["threats"]:
        assert {"id", "title", "adversary", "mitigations", "tests"} <= set(t), t.get("id")
        assert t["mitigations"] and t["tests"], f"{t['id']} needs mitigations and tests"
        for ref in t["tests"]:
            file, _, name = ref.partition("::")
            p = ROOT / file
            if not p.is_file() or name.split("[")[0] not in _functions(p):
                missing.append(f"{t['id']}: {ref}")
    assert not missing, "threat index names tests that do not exist:\n" + "\n".join(missing)


def test_every_secagg_threat_in_markdown_is_indexed():
    md = (ROOT / "threat_models" / "secure_aggregation.md").read_text()
    data = yaml.safe_load((ROOT / "threat_models" / "index.yaml").read_text())
    indexed = {t["id"] for t in data["threats"]}
    in_md = {line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| SA-")}
    assert in_md and in_md <= indexed
