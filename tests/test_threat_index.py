"""Every threat in every threat_models/*index*.yaml names at least one test, and every named test exists.

A test id is "path/to/file.py::name" (or "...::Class::name"); it exists when the file exists and
defines a function (or method) of that name. Ids are unique across all indexes, and every SYS id of
threat_models/system.md is indexed.
"""

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INDEXES = sorted((ROOT / "threat_models").glob("*index*.yaml"))


def _defined(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def test_indexes_are_found():
    names = {p.name for p in INDEXES}
    assert {"index.yaml", "privacy_index.yaml", "ckks_index.yaml", "transport_index.yaml", "system_index.yaml"} <= names


def _problems(threats: list, cache: dict | None = None) -> list[str]:
    cache = {} if cache is None else cache
    problems = []
    for t in threats:
        missing_keys = {"id", "title", "adversary", "mitigations", "tests"} - set(t)
        if missing_keys:
            problems.append(f"{t.get('id')}: missing {sorted(missing_keys)}")
            continue
        if not t["mitigations"]:
            problems.append(f"{t['id']}: no mitigation listed")
        if not t["tests"]:
            problems.append(f"{t['id']}: no test")
        for ref in t["tests"]:
            file, sep, name = ref.partition("::")
            path = ROOT / file
            if not sep or not name or not path.is_file():
                problems.append(f"{t['id']}: {ref} (no such file)")
                continue
            if path not in cache:
                cache[path] = _defined(path)
            if name.split("::")[-1].split("[")[0] not in cache[path]:
                problems.append(f"{t['id']}: {ref} (no such test)")
    return problems


@pytest.mark.parametrize("index", INDEXES, ids=lambda p: p.name)
def test_every_threat_has_a_test_that_exists(index):
    data = yaml.safe_load(index.read_text())
    assert isinstance(data, dict) and isinstance(data.get("threats"), list) and data["threats"], index.name
    problems = _problems(data["threats"])
    assert not problems, f"{index.name}:\n" + "\n".join(problems)


def test_threat_ids_are_unique_across_indexes():
    seen: dict[str, str] = {}
    dupes = []
    for index in INDEXES:
        for t in yaml.safe_load(index.read_text())["threats"]:
            if t["id"] in seen:
                dupes.append(f"{t['id']} in {seen[t['id']]} and {index.name}")
            seen[t["id"]] = index.name
    assert not dupes, dupes


def test_every_system_threat_in_markdown_is_indexed():
    md = (ROOT / "threat_models" / "system.md").read_text()
    in_md = set(re.findall(r"^\| (SYS-\d\d) \|", md, flags=re.M))
    indexed = {t["id"] for t in yaml.safe_load((ROOT / "threat_models" / "system_index.yaml").read_text())["threats"]}
    assert in_md and in_md == indexed, sorted(in_md ^ indexed)


def test_checker_catches_a_missing_test():
    """The checker itself can fail: a reference to a test that does not exist is reported."""
    fake = ROOT / "tests" / "test_threat_index.py"
    assert "test_checker_catches_a_missing_test" in _defined(fake)
    assert "test_that_does_not_exist" not in _defined(fake)
    base = {"id": "X-1", "title": "t", "adversary": "a", "mitigations": ["m"]}
    assert _problems([dict(base, tests=["tests/test_threat_index.py::test_checker_catches_a_missing_test"])]) == []
    assert _problems([dict(base, tests=["tests/test_threat_index.py::test_that_does_not_exist"])])
    assert _problems([dict(base, tests=["tests/no_such_file.py::test_x"])])
    assert _problems([dict(base, tests=[])]) and _problems([{"id": "X-2"}])
