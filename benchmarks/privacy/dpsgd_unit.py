"""Table of benchmarks/privacy/dpsgd_unit.sh's rows: per row the privacy unit, the holders' documents and rows,
the last round's eval perplexity, the record-level ε (largest holder, recomputed by `securefed verify`) and wall
time. Usage: python benchmarks/privacy/dpsgd_unit.py OUT_DIR (writes OUT_DIR/table.md and prints it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(out: Path) -> str:
    wall = dict(line.split()[:2] for line in (out / "wall.txt").read_text().splitlines()) if (out / "wall.txt").exists() else {}
    lines = ["| row | unit | documents per holder | rows per holder | eval ppl (last round) | record-level ε (max over holders) | verify | wall s |",
             "|---|---|---|---|---|---|---|---|"]
    for d in sorted(p for p in out.iterdir() if p.is_dir()):
        s = json.loads((d / "summary.json").read_text())
        rels = [json.loads(p.read_text()) for p in sorted(d.glob("holder-*-last-release.json")) if p.read_text().strip()]
        mans = [json.loads(p.read_text())["holders"][0] for p in sorted(d.glob("holder-*-data_manifest.json"))]
        unit = {r["record_level"].get("unit", "sequence") for r in rels} or {"?"}
        docs = [m.get("dp_sgd_unit", {}).get("documents", m["documents"]) for m in mans]
        rows = [m.get("dp_sgd_unit", {}).get("rows", m["sequences"]) for m in mans]
        eps = max(r["record_level"]["epsilon"] for r in rels) if rels else None
        ok = "VERIFIED" in (d / "verify.txt").read_text()
        lines.append(f"| {d.name} | {'/'.join(sorted(unit))} | {', '.join(map(str, docs))} | {', '.join(map(str, rows))} | "
                     f"{s['fed_eval_ppl']:.1f} | {eps:.3f} | {'yes' if ok else 'NO'} | {wall.get(d.name, '?')} |")
    text = "\n".join(lines) + "\n"
    (out / "table.md").write_text(text)
    return text


if __name__ == "__main__":
    print(main(Path(sys.argv[1])))
