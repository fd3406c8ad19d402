"""A lower layer never imports a higher one (securefed/README.md)."""

import ast
from pathlib import Path

import securefed

ROOT = Path(securefed.__file__).parent

# primitives → protocols (secagg, ckks) → privacy → training → runtime (run directory, config, progress,
# export, baseline) and report → transport (the gRPC wire) → federation (the round, written once, and its
# channels) → audit (attack scenarios driving the federation) → commands / cli. No exemptions.
LAYERS = {
    "configio": 0, "jsonio": 0, "outdir": 0, "progress": 0, "presets": 0, "primitives": 1, "secagg": 2, "ckks": 2, "privacy": 3,
    "training": 4, "report": 5, "runtime": 5, "transport": 6, "federation": 7, "audit": 8, "commands": 9, "cli": 9,
}


def _layer(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "securefed" or len(parts) < 2:
        return None
    return LAYERS.get(parts[1])


def _imports(path: Path, module: str):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                yield a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the package
                base = module.split(".")[: -node.level]
                yield ".".join(base + ([node.module] if node.module else []))
            elif node.module:
                yield node.module


def test_no_upward_imports():
    violations = []
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        own = _layer(module)
        if own is None:
            continue
        for imp in _imports(path, module):
            other = _layer(imp)
            if other is not None and other > own:
                violations.append(f"{module} (layer {own}) imports {imp} (layer {other})")
    assert not violations, "\n".join(violations)


def test_every_subpackage_has_a_layer():
    for p in ROOT.iterdir():
        if p.is_dir() and (p / "__init__.py").exists():
            assert p.name in LAYERS, f"securefed.{p.name} has no layer in tests/test_layering.py"


def test_packages_form_no_cycle():
    """Beyond the layer order: no two packages of one layer import each other, directly or through others."""
    edges: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        module = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts).removesuffix(".__init__")
        own = module.split(".")[1] if module.count(".") else None
        if own is None:
            continue
        for imp in _imports(path, module):
            parts = imp.split(".")
            if parts[0] == "securefed" and len(parts) > 1 and parts[1] != own and parts[1] in LAYERS:
                edges.setdefault(own, set()).add(parts[1])

    def reach(a: str, seen: set[str]) -> set[str]:
        for b in edges.get(a, ()):
            if b not in seen:
                seen.add(b)
                reach(b, seen)
        return seen
    cycles = sorted(p for p in edges if p in reach(p, set()))
    assert not cycles, f"packages on an import cycle: {cycles}"
