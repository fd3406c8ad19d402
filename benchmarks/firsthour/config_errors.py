"""How fast `securefed simulate` refuses bad input (issue 16: < 2 s), and how long a demo log stays silent.

    python benchmarks/firsthour/config_errors.py [--repeat 5]          # refusal latency, fresh processes
    python benchmarks/firsthour/config_errors.py --gaps RUN.log        # longest gap between lines of a log
                                                                       # written through `ts` (moreutils) or
                                                                       # the --timestamp wrapper below
    python benchmarks/firsthour/config_errors.py --timestamp -- CMD... # run CMD, prefix each output line
                                                                       # with seconds since start

Each case runs `python -m securefed.cli simulate ...` in a fresh interpreter (what a user pays: start-up,
imports, validation) and records wall time, exit code and the message. Results: results.md beside this.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _cases(tmp: Path) -> list[tuple[str, list[str]]]:
    other = tmp / "other-run"
    other.mkdir()
    (other / "config.yaml").write_text("seed: 0\nprivacy: {mode: distributed}\n")
    (other / "metrics.jsonl").write_text('{"round": 1}\n')
    return [
        ("bad value", ["--set", "train.local_steps=0"]),
        ("unknown key", ["--set", "federation.bogus=1"]),
        ("unknown preset", ["--preset", "nope"]),
        ("missing --config file", ["--config", str(tmp / "missing.yaml")]),
        ("reused --out", ["--out", str(other)]),
        ("--resume without checkpoint", ["--out", str(tmp / "none"), "--resume"]),
    ]


def refusal_latency(repeat: int) -> list[dict]:
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for name, argv in _cases(Path(d)):
            times, code, msg = [], None, ""
            for _ in range(repeat):
                t0 = time.perf_counter()
                p = subprocess.run([sys.executable, "-m", "securefed.cli", "simulate", *argv], capture_output=True,
                                   text=True, env=env, cwd=d)
                times.append(time.perf_counter() - t0)
                code, msg = p.returncode, p.stderr.strip().splitlines()[-1][:110]
            rows.append({"case": name, "exit": code, "median_s": statistics.median(times), "max_s": max(times),
                         "message": msg})
    return rows


def gaps(log: Path) -> dict:
    """Longest gap between consecutive lines whose first field is a time (seconds or HH:MM:SS)."""
    stamps = []
    for line in log.read_text(errors="replace").splitlines():
        head = (line.split(maxsplit=1) or [""])[0]
        try:
            stamps.append(float(head))
        except ValueError:
            try:
                h, m, s = head.split(":")
                stamps.append(int(h) * 3600 + int(m) * 60 + float(s))
            except ValueError:
                continue
    diffs = [b - a for a, b in zip(stamps, stamps[1:])]
    return {"lines": len(stamps), "total_s": stamps[-1] - stamps[0] if stamps else 0.0,
            "max_gap_s": max(diffs, default=0.0), "gaps_over_30s": sum(x > 30 for x in diffs)}


def timestamp(cmd: list[str]) -> int:
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    assert p.stdout is not None
    for line in p.stdout:
        sys.stdout.write(f"{time.monotonic() - t0:9.2f} {line}")
        sys.stdout.flush()
    return p.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="runs per case (median reported)")
    ap.add_argument("--gaps", type=Path, help="a timestamped log: report its longest silent gap")
    ap.add_argument("--timestamp", action="store_true", help="run the command after -- with timestamped output")
    ap.add_argument("cmd", nargs=argparse.REMAINDER, help="with --timestamp: the command to run (after --)")
    a = ap.parse_args()
    if a.timestamp:
        return timestamp([c for c in a.cmd if c != "--"] if a.cmd[:1] == ["--"] else a.cmd)
    if a.gaps:
        print(json.dumps(gaps(a.gaps), indent=2))
        return 0
    rows = refusal_latency(a.repeat)
    print(f"{'case':30} {'exit':>4} {'median s':>9} {'max s':>7}  message")
    for r in rows:
        print(f"{r['case']:30} {r['exit']:>4} {r['median_s']:9.2f} {r['max_s']:7.2f}  {r['message']}")
    worst = max(r["max_s"] for r in rows)
    print(f"slowest refusal: {worst:.2f} s ({'under' if worst < 2 else 'OVER'} the 2 s goal)")
    return 0 if worst < 2 and all(r["exit"] == 2 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
