"""`securefed verify RUN_DIR`: re-verify a run's privacy records (protocols/dp.md §7.3).

Checks every Ed25519 signature (keys from RUN_DIR/privacy/keys.json, optionally pinned with
--coordinator-key), every hash-chain link, the anchors (checkpoint, summary.json, an earlier report),
recomputes every ε from the recorded events with the pinned accountant scheme, and cross-checks the
server ledger against the server's per-holder views and the holders' own ledgers
(RUN_DIR/holders/<id>/ledger.jsonl, plus any --holder-ledger PATH). The population behind the sampling
rate must be the roster's size (RUN_DIR/pki/roster.yaml, or --roster PATH), and the cohort memberships
the holders' own ledgers witness must be plausible at the stated sampling rate (protocols/dp.md §2.1).
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="verify a run's privacy ledgers: signatures, chains, anchors, every ε recomputed",
                       description=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="""exit status:
  0  every record verified and signed
  1  a record is missing or does not verify (the first bad one is named; no epsilon is stated)
  2  not a run directory, or a bad argument
  3  consistent, but unsigned (no privacy/keys.json)""")
    p.add_argument("run_dir", help="a finished or interrupted run directory")
    p.add_argument("--holder-ledger", dest="holder_ledgers", action="append", default=[], metavar="PATH",
                   help="a holder's own ledger kept outside RUN_DIR (its state directory); repeatable")
    p.add_argument("--roster", metavar="PATH",
                   help="the federation's roster (securefed keygen's roster.yaml), known out of band; default: "
                        "RUN_DIR/pki/roster.yaml. Each server entry's population must be its size")
    p.add_argument("--coordinator-key", metavar="HEX",
                   help="the coordinator's Ed25519 public key (64 hex digits), known out of band: keys.json must name it")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """0: verified and signed; 1: a record does not verify; 2: not a run directory or bad arguments;
    3: consistent, but unsigned (no privacy/keys.json)."""
    from securefed.privacy.accountant import epsilon_text
    from securefed.privacy.ledger import read_ledger
    from securefed.report.privacy_checks import verify_run

    rd = Path(args.run_dir)
    if not rd.is_dir() or not ((rd / "privacy").is_dir() or (rd / "config.yaml").is_file()):
        print(f"securefed verify: {rd} is not a run directory (no privacy/ and no config.yaml)", file=sys.stderr)
        return 2
    key = None
    if args.coordinator_key is not None:
        if not re.fullmatch(r"[0-9a-fA-F]{64}", args.coordinator_key):
            print("securefed verify: --coordinator-key must be 64 hex digits", file=sys.stderr)
            return 2
        key = bytes.fromhex(args.coordinator_key)
    for flag, p, want in [*(("--holder-ledger", p, "ledger.jsonl in the holder's state_dir") for p in args.holder_ledgers),
                          *((("--roster", args.roster, "roster.yaml of the federation's PKI"),) if args.roster else ())]:
        if not Path(p).is_file():   # a directory is named as one, not as missing
            why = "is a directory" if Path(p).is_dir() else "does not exist"
            print(f"securefed verify: {flag} {p} {why}; give the file ({want})", file=sys.stderr)
            return 2
    v = verify_run(rd, holder_ledgers=args.holder_ledgers, coordinator_key=key, roster=args.roster)
    out = sys.stdout if v.ok else sys.stderr
    print(v.banner(), file=out)
    for p in v.problems:
        print(f"  problem: {p}", file=out)
    for n in v.notes:
        print(f"  note: {n}", file=out)
    if not v.ok:
        return 1
    if v.epsilon is not None and math.isinf(v.epsilon):   # no holder-level DP: a δ would mean nothing
        print(f"privacy: holder-level epsilon=inf (differential privacy off; {v.entries} recorded events)")
    elif v.epsilon is not None and v.entries == 0:
        print("privacy: epsilon=0 (no round released anything"
              + ("; the signed end-of-run record shows no entry was cut)" if v.signed else ")"))
    elif v.epsilon is not None:
        # the unit, the relation and, under sampling, against whom the amplified ε holds: verify's output alone read
        # "epsilon=7.99554" for a 3-of-6 run whose holders' own, unamplified ε is the one valid against the coordinator
        entries = read_ledger(rd / "privacy" / "ledger.jsonl")
        q = min((e["event"].get("q", 1.0) for e in entries if isinstance(e.get("event"), dict)), default=1.0)
        print(f"privacy: holder-level epsilon={epsilon_text(v.epsilon, 6)} delta={v.delta:g} "
              f"({entries[-1].get('neighbouring_relation')} neighbours, one holder; recomputed from {v.entries} "
              "recorded events)")
        if q < 1:
            print(f"privacy: that epsilon is amplified by sampling the cohorts (q={q:g}): it holds only against whoever "
                  "does not know the cohorts; against the coordinator, and any reader of the ledgers, each holder's own "
                  "epsilon below holds")
        for c, e in sorted(v.colluding_epsilon.items()):   # distributed DP, dp.md §11: never amplified
            print(f"privacy: epsilon={epsilon_text(e, 6)} if {c} holder(s) of each sum collude with the server "
                  "(their noise shares subtracted" + ("; no amplification: the server knows the cohorts, so this is "
                                                      "for a holder in every sum)" if q < 1 else ")"))
    for h in sorted(v.holder_own_epsilon):
        print(f"holder {h}: own holder-level epsilon={epsilon_text(v.holder_own_epsilon[h], 6)} (no amplification; server's view {epsilon_text(v.holder_view_epsilon.get(h), 6)})")
    if v.record_level:
        _print_record_level(rd, v)
    return 0 if v.signed else 3


def _print_record_level(rd: Path, v) -> None:
    """Each holder's record-level (DP-SGD) ε with its unit and relation as its verified signed releases record them,
    then what that guarantee does not cover against the coordinator (PV-54: the lines named a unit in words of their
    own, no relation and no exception) and the padded holders' timing δ. The words are the report's
    (record_level.record_unit_words, coordinator_exceptions, timing_delta_words): one source per fact."""
    from securefed.privacy.accountant import epsilon_text
    from securefed.privacy.holder_ledger import RECORD_RELATION
    from securefed.report.record_level import (coordinator_exceptions, record_facts, record_unit_words,
                                                timing_delta_words)
    from securefed.report.render import ReportInputError, _config

    try:
        config = _config(rd / "config.yaml")[0]
    except (ReportInputError, OSError):
        config = {}      # config.yaml only names the unit where no holder signed one; q and padding are the signed ones
    f = record_facts({"config": config, "verification": v, "ledger": {"ok": True}})
    for h, rl in (f["record_level"] or {}).items():   # from the holder's own signed releases
        one = record_unit_words(dict(f, record_level={h: rl}))
        print(f"holder {h}: record-level epsilon={epsilon_text(rl['epsilon'], 6)} delta={rl['delta']:g} after "
              f"{rl['steps']} DP-SGD steps ({RECORD_RELATION} neighbours, {one}; recomputed from its signed releases)")
    for c in coordinator_exceptions(f):
        print(f"privacy: record-level exception (protocols/dp.md §10): {c}")
    timing = timing_delta_words(f["record_level"] or {})
    if timing:   # the padded holders' δ against a reply timer, as the report states it (dp.md §10.4 rule 4)
        print(f"privacy: record-level timing δ (protocols/dp.md §10.4): {timing.removeprefix('Timing: ')}")
