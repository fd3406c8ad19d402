"""The security suite (every attack scenario with its expected verdict) and `run_audit`, which runs it
and the privacy audit of a profile and writes the report."""

from __future__ import annotations

import datetime as dt
import json
import platform
import time
from pathlib import Path

from securefed import jsonio
import securefed
from securefed.audit import deployment_attacks as dep
from securefed.audit import input_attacks as inp
from securefed.audit import protocol_attacks as pro
from securefed.audit import release_attacks as rel
from securefed.audit.findings import MITIGATED, RESIDUAL, VULNERABLE, Finding, Scenario, timed

__all__ = ["SCENARIOS", "run_security", "run_audit", "check_audit_out", "AUDIT_FILES"]

# every file run_audit writes into its folder; a folder holding these and nothing else is an earlier audit report
AUDIT_FILES = frozenset({"config.json", "report.json", "report.md", "report.html"})

SCENARIOS: tuple[Scenario, ...] = (
    Scenario("SEC-01", "Server lies about dropouts", pro.lying_dropouts, MITIGATED),
    Scenario("SEC-02", "Key substitution (MITM)", pro.key_substitution, MITIGATED),
    Scenario("SEC-03", "Sybil holders beyond the roster", pro.sybil_holders, MITIGATED),
    Scenario("SEC-04", "Model inconsistency (Pasquini et al.)", pro.model_inconsistency, MITIGATED),
    Scenario("SEC-05", "Replay of an earlier round", pro.replay, RESIDUAL),
    Scenario("SEC-06", "Malformed / inconsistent Shamir shares", pro.bad_shares, MITIGATED),
    Scenario("SEC-07", "Ring wrap by a holder", inp.ring_wrap, RESIDUAL),
    Scenario("SEC-08", "Unclipped / poisoned update", inp.poisoned_update, RESIDUAL),
    Scenario("SEC-09", "Disaggregation by varying cohorts (Lam et al.)", inp.disaggregation, RESIDUAL),
    Scenario("SEC-10", "Downgrade inside the protocol", inp.protocol_downgrade, MITIGATED),
    Scenario("SEC-11", "Downgrade through the coordinator's welcome", dep.welcome_downgrade, MITIGATED),
    Scenario("SEC-12", "Tampered checkpoint runs code at resume", dep.checkpoint_code_execution, MITIGATED),
    Scenario("SEC-13", "Coordinator re-runs a released round under a smaller cohort", rel.coordinator_reruns_round,
             MITIGATED),
    Scenario("SEC-14", "CKKS decryptor asked for several sums of a round", rel.decryptor_asked_for_several_sums,
             MITIGATED),
    Scenario("SEC-15", "Several CKKS key holders each asked for one sum of a round",
             rel.key_holders_each_asked_for_one_sum, MITIGATED),   # found and fixed 2026-12 (ckks.md §5.3 D5)
)


def run_security() -> list[Finding]:
    out = []
    for s in SCENARIOS:
        try:
            f = timed(s.run)
        except Exception as e:  # a crashing scenario is itself a finding for the reviewer
            f = Finding(s.id, s.title, VULNERABLE, f"scenario crashed: {type(e).__name__}: {e}", {}, ("SYS-01",))
        f.evidence["expected_verdict"] = s.expected
        out.append(f)
    return out


def _is_earlier_audit(d: Path) -> bool:
    entries = list(d.iterdir())
    if not all(e.name in AUDIT_FILES and e.is_file() and not e.is_symlink() for e in entries):
        return False
    try:
        cfg = jsonio.loads((d / "config.json").read_text(encoding="utf-8"), legacy=True)
    except (OSError, ValueError):
        return False
    return isinstance(cfg, dict) and {"profile", "scenarios"} <= cfg.keys()


def check_audit_out(out: Path) -> None:
    """Refuse (FileExistsError, one line) a report folder whose files the audit would overwrite: a file, a
    symbolic link, or a non-empty folder that is not an earlier audit report (its own config.json and report.*)."""
    from securefed.outdir import out_problem, uncreatable

    why = uncreatable(out)
    if why:
        raise FileExistsError(f"--out {out} cannot be created: {why}; choose another folder")
    why = out_problem(out, _is_earlier_audit)
    if why == "symlink":
        raise FileExistsError(f"--out {out} is a symbolic link; name a real folder")
    if why == "file":
        raise FileExistsError(f"--out {out} is a file, not a folder; choose a new folder")
    if why is not None:
        raise FileExistsError(f"--out {out} is not empty and is not an earlier audit report (it {why}); the "
                              "audit writes config.json and report.{json,md,html} there: choose a new or empty folder")


def run_audit(profile: str, out: Path, *, privacy: bool = True) -> dict:
    """Run both suites, write out/report.{md,html,json} and out/config.json; return the result. ``out`` must be
    new, empty, or an earlier audit report (check_audit_out: FileExistsError before any work)."""
    from securefed.audit.privacy_audit import PROFILES, privacy_audit
    from securefed.audit.report import write_report

    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {profile!r}")
    out = Path(out)
    check_audit_out(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    findings = run_security()
    priv = None
    if privacy:  # LM run directories (models, checkpoints) go to a scratch directory, not into the report
        import tempfile

        with tempfile.TemporaryDirectory(prefix="securefed-audit-") as work:
            priv = privacy_audit(profile, Path(work))
    result = {
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "profile": profile, "securefed_version": securefed.__version__, "python": platform.python_version(),
        "seconds": round(time.perf_counter() - t0, 1),
        "findings": [f.to_dict() for f in findings], "privacy": priv,
        "unexpected": [f.id for f, s in zip(findings, SCENARIOS) if f.verdict != s.expected],
    }
    lm = {k: v["overrides"] for k, v in priv["lm_runs"].items()} if priv else {}
    (out / "config.json").write_text(json.dumps({"profile": profile, "settings": PROFILES[profile],
                                                  "lm_run_overrides": lm, "scenarios": [s.id for s in SCENARIOS]},
                                                 indent=2, default=str) + "\n")
    (out / "report.json").write_text(jsonio.dumps(result, indent=2, sort_keys=False, default=str) + "\n")
    write_report(result, out)
    return result
