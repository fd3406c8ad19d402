"""`securefed audit`: run the security scenarios and the empirical privacy audit, write a report."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("audit", help="attack scenarios + empirical privacy audit -> report (md, html, json)",
                              description="Runs every security scenario (verdict, evidence, threat ids) and the privacy "
                                          "audit (canary exposure, one-run epsilon lower bound) of a profile. Exit "
                                          "status: 0 every verdict as expected; 1 a verdict differs from the expected "
                                          "one (or, with --strict, any scenario is VULNERABLE); 2 --out is a file or "
                                          "a non-empty folder that is not an earlier audit report (nothing run or "
                                          "written).")
    p.add_argument("--profile", choices=("quick", "full"), default="quick",
                   help="quick: CI-sized (about a minute); full: the committed example report")
    p.add_argument("--out", metavar="DIR", help="report directory (default: audits/reports/<UTC date>/ for full, <UTC date>-quick/ for quick): "
                        "new, empty, or an earlier audit report, whose files are rewritten")
    p.add_argument("--security-only", action="store_true", help="skip the privacy audit (seconds)")
    p.add_argument("--strict", action="store_true", help="exit 1 if any scenario is VULNERABLE, even if known")
    p.set_defaults(func=run)


def run(args) -> int:
    from securefed.audit import VULNERABLE, run_audit
    from securefed.audit.suite import check_audit_out
    from securefed.privacy.accountant import epsilon_text

    day = f"{dt.datetime.now(dt.timezone.utc):%Y-%m-%d}"
    out = Path(args.out or f"audits/reports/{day}" + ("" if args.profile == "full" else f"-{args.profile}"))
    try:
        check_audit_out(out)   # before any scenario runs: refused at once
    except FileExistsError as e:
        print(f"securefed audit: {e}", file=sys.stderr)
        return 2
    res = run_audit(args.profile, out, privacy=not args.security_only)
    for f in res["findings"]:
        print(f"{f['id']:7} {f['verdict']:20} {f['title']}")
    if res["privacy"]:
        for r in res["privacy"]["table"]:
            print(f"privacy: {r['run']:32} accountant eps {epsilon_text(r['accountant_epsilon'], 3)}  "
                  f"lower bound {r['epsilon_lower_bound']:.3g} ({r['confidence']:.0%})")
    print(f"report: {out / 'report.md'} and report.html ({res['seconds']} s)")
    if res["unexpected"]:
        print(f"verdicts differ from the expected ones: {', '.join(res['unexpected'])}")
        return 1
    if args.strict and any(f["verdict"] == VULNERABLE for f in res["findings"]):
        return 1
    return 0
