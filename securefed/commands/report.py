"""`securefed report RUN_DIR`: privacy and training report (JSON, Markdown, self-contained HTML, PNGs)."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render the privacy and training report of a run directory",
                       description="Reads RUN_DIR's config, metrics, summary and privacy ledger (verifying its hash "
                                   "chain) and writes RUN_DIR/report/{report.json,report.md,report.html,*.png}.")
    p.add_argument("run_dir", help="a finished or interrupted run directory")
    p.add_argument("--out", help="output folder (default: RUN_DIR/report)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0: written and every privacy record verified (signatures, chains, anchors, recomputed ε; see
    `securefed verify`); 1: written, but a record is missing or does not verify (no ε is stated); 2: no run."""
    from securefed.report import render_report

    try:
        rep = render_report(args.run_dir, args.out)
    except FileNotFoundError as e:
        print(f"securefed report: {e}", file=sys.stderr)
        return 2
    out = args.out or f"{args.run_dir}/report"
    print(f"report written to {out}/report.html")
    ver = rep["verification"]
    if not rep["ledger_ok"] or not ver["ok"]:
        print(f"securefed report: PRIVACY RECORDS NOT VERIFIED: {rep['ledger_error'] or ver['banner']}", file=sys.stderr)
        for p in ver["problems"][1:]:
            print(f"  problem: {p}", file=sys.stderr)
        print("securefed report: no epsilon is stated for this run", file=sys.stderr)
        return 1
    eps = rep["facts"]["epsilon"]
    if not ver["signed"]:
        print(f"securefed report: WARNING: {ver['banner']}", file=sys.stderr)
    what = "ledgers verified" if ver["signed"] else "ledgers consistent but unsigned"
    print(f"privacy: epsilon={eps} delta={rep['facts']['delta']} ({what}, head {rep['ledger_head']})")
    return 0
