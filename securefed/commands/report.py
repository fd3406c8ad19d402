"""`securefed report RUN_DIR`: privacy and training report (JSON, Markdown, self-contained HTML, PNGs)."""

from __future__ import annotations

import argparse
import sys

EPILOG = """exit status:
  0  report written; every privacy record verified (as `securefed verify` checks them)
  1  report written, but a privacy record is missing or does not verify: a signature, hash chain, anchor or
     recomputed epsilon, or no signed end-of-run record (an unfinished run); flagged at the top, no epsilon stated
  2  no report written: RUN_DIR does not exist, is not a securefed run, or one of its files is corrupt
     (the message names the file and line); or --out would lose files: it is RUN_DIR itself, a folder that
     contains RUN_DIR, a folder inside one of RUN_DIR's own entries, a file, or a non-empty folder that is
     not an earlier report, or cannot be created (nothing is written or removed); or the report cannot be
     written (disk full: the message names the file; an earlier report is kept)"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("report", help="render the privacy and training report of a run directory",
                       description="Reads RUN_DIR's config.yaml, metrics.jsonl, summary.json, baseline/metrics.jsonl "
                                   "and privacy ledgers (verifying their hash chains) and writes "
                                   "RUN_DIR/report/{report.json,report.md,report.html,*.png}: the run's facts "
                                   "(id, date, versions, preset, model, holders, tokens, perplexities), warnings "
                                   "raised while it ran, the privacy guarantee in plain words, and plots. The report "
                                   "is built aside and renamed into place: a failure leaves any earlier one intact.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", metavar="RUN_DIR", help="a finished or interrupted run directory (securefed simulate/server --out)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: RUN_DIR/report): new, empty, or an earlier report, which is "
                        "replaced as a whole; anything else (RUN_DIR itself, a folder around it, a file, a folder "
                        "with other files) is refused with exit 2")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0: written and every privacy record verified (signatures, chains, anchors, recomputed ε; see
    `securefed verify`); 1: written, but a record is missing or does not verify (no ε is stated); 2: nothing
    written (not a run, or a corrupt file: the message names it)."""
    from securefed.privacy.accountant import epsilon_text
    from securefed.report import ReportInputError, render_report
    from securefed.runtime.rundir import RunDirError

    try:
        rep = render_report(args.run_dir, args.out)
    except (FileNotFoundError, RunDirError, ReportInputError) as e:
        print(f"securefed report: {e}", file=sys.stderr)
        return 2
    except OSError as e:   # the report cannot be written (disk full): built aside, so any earlier one is kept
        from securefed.outdir import os_error_text

        print(f"securefed report: the report was not written: {os_error_text(e)} (an earlier report is kept)",
              file=sys.stderr)
        return 2
    out = args.out or f"{args.run_dir}/report"
    print(f"report written to {out}/report.html")
    for w in rep.get("warnings", [])[:3]:
        print(f"securefed report: WARNING ({w['where']}): {w['warning']}", file=sys.stderr)
    ver = rep["verification"]
    if not rep["ledger_ok"] or not ver["ok"]:
        print(f"securefed report: PRIVACY RECORDS NOT VERIFIED: {rep['ledger_error'] or ver['banner']}", file=sys.stderr)
        for p in ver["problems"][1:]:
            print(f"  problem: {p}", file=sys.stderr)
        print("securefed report: no epsilon is stated for this run", file=sys.stderr)
        return 1
    if not ver["signed"]:
        print(f"securefed report: WARNING: {ver['banner']}", file=sys.stderr)
    facts = rep["facts"]
    dp = facts.get("mode") in ("central", "distributed")
    rec = facts.get("record_level") or {}
    what = "ledgers verified" if ver["signed"] else "ledgers consistent but unsigned"
    off = " (holder-level differential privacy off)" if rec or (facts.get("dp_sgd") or {}).get("enabled") else \
        " (differential privacy off)"
    print(f"privacy: {'holder-level ' if rec else ''}epsilon={facts['epsilon']}" + (f" delta={facts['delta']}" if dp else off)
          + f" ({what}, head {rep['ledger_head']})")
    for h, r in rec.items():   # verified from each holder's own signed releases (never stated when they do not verify)
        unit = {"document": "document", "group": "group of documents (data.unit_field)"}.get(r.get("unit"), "training sequence")
        print(f"privacy: holder {h} record-level epsilon={epsilon_text(r['epsilon'], 6)} delta={r['delta']:g} after {r['steps']} "
              f"DP-SGD steps (cumulative, per {unit})")
    if facts.get("deterministic_secrets"):
        print("securefed report: WARNING: NOT private: for tests — deterministic_secrets derives every noise sample and "
              f"mask from the configuration's seed ({facts.get('seed')})", file=sys.stderr)
    return 0
