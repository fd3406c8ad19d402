"""Render RUN_DIR/report/{report.json, report.md, report.html, *.png} from the run directory's files only.

Inputs (DESIGN.md "Run directory contract"): config.yaml, metrics.jsonl, summary.json,
privacy/ledger.jsonl (+ privacy/holders/*.jsonl, the holders' own holders/<id>/ledger.jsonl and
privacy/keys.json's roster of holders, so a holder never sampled is listed too), optional
baseline/metrics.jsonl. Every input may be
missing (an interrupted run); the report says what it could not find. A directory holding none of
them is not a run: RunDirError, and nothing is written. A corrupt input (a truncated summary.json, a
metrics line that is not JSON, a config.yaml that is not YAML) is a ReportInputError naming the file
and line: never skipped, and no report is written. The report is built in a temporary sibling
directory and renamed into place, so a failure never leaves a half-written report. The ledger's hash chain is
verified and the verdict is printed at the top — a broken chain is flagged loudly, never hidden.
The Markdown and the HTML are built from one list of sections; the HTML embeds the PNGs as base64.
"""

from __future__ import annotations

import base64
import html
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml

from securefed import jsonio
from securefed.configio import parse_yaml
from securefed.outdir import os_error_text, out_problem, replace_dir, uncreatable
from securefed.privacy.ledger import LedgerError, entry_hash, read_ledger
from securefed.report import header, privacy_checks, rounds, text
from securefed.runtime.health import PPL_OVERFLOW
from securefed.runtime.rundir import RUN_MARKERS, RunDirError, is_run_dir

__all__ = ["render_report", "render_run_report", "load_run", "check_report_out", "ReportInputError", "ReportOutError",
           "REPORT_FILES"]


class ReportInputError(ValueError):
    """An input file of the run directory is corrupt; the message names the file (and line)."""


def _jsonl(path: Path) -> list[dict]:
    try:
        return jsonio.read_jsonl(path, legacy=True)  # runs written before strict JSON stay readable
    except jsonio.JSONFileError as e:
        raise ReportInputError(str(e)) from None


def _num(v: Any) -> float:
    try:
        x = jsonio.decode_float(v)  # numbers and the "inf"/"-inf"/"nan" strings
    except ValueError:
        return math.nan
    return math.nan if x is None else x


def _config(path: Path) -> tuple[dict, dict]:
    """config.yaml as a mapping, and the versions recorded in its ``# versions: {...}`` line."""
    if not path.is_file():
        return {}, {}
    raw = path.read_text(encoding="utf-8", errors="replace")
    try:
        config = parse_yaml(raw)
    except yaml.YAMLError as e:
        raise ReportInputError(f"{path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if config is None:   # an empty (truncated) file: the report stated "run preset: unknown (no config.yaml)", exit 0
        raise ReportInputError(f"{path} is empty: it holds none of the run's settings (a run writes its whole resolved "
                               "config there when it starts)")
    if not isinstance(config, dict):
        raise ReportInputError(f"{path} does not hold a mapping (got {type(config).__name__})")
    versions: dict = {}
    for line in raw.splitlines():
        if line.startswith("# versions: "):
            try:
                versions = jsonio.loads(line[len("# versions: "):])
            except ValueError:
                raise ReportInputError(f"{path}: the '# versions:' line is not valid JSON") from None
    return config or {}, versions if isinstance(versions, dict) else {}


def load_run(run_dir: Path) -> dict:
    """Everything the report needs, read from files (errors: see the module docstring)."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirError(f"{run_dir} is a file, not a run directory: give the --out folder of a run")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist")
    if not is_run_dir(run_dir):
        raise RunDirError(f"{run_dir} is not a securefed run directory: it holds none of {', '.join(RUN_MARKERS)}; "
                          "nothing to report")
    config, versions = _config(run_dir / "config.yaml")
    summary_path = run_dir / "summary.json"
    try:
        summary = jsonio.read_json(summary_path, legacy=True) if summary_path.is_file() else {}
    except jsonio.JSONFileError as e:
        raise ReportInputError(str(e)) from None
    if not isinstance(summary, dict):
        raise ReportInputError(f"{summary_path} does not hold a JSON object")
    ledger: dict[str, Any] = {"path": "privacy/ledger.jsonl", "ok": False, "entries": [], "error": None, "head": None}
    lp = run_dir / "privacy" / "ledger.jsonl"
    if not lp.is_file():
        ledger["error"] = "no privacy ledger found"
    else:
        try:
            ledger["entries"] = read_ledger(lp)
            ledger["ok"] = True
            ledger["head"] = entry_hash(ledger["entries"][-1]) if ledger["entries"] else None
        except LedgerError as e:
            ledger["error"] = str(e)
    metrics = _jsonl(run_dir / "metrics.jsonl")
    holders = _holders(run_dir, privacy_checks.not_asked_rounds(metrics))
    run = {"run_dir": str(run_dir), "config": config or {}, "summary": summary, "metrics": metrics,
           "baseline": _jsonl(run_dir / "baseline" / "metrics.jsonl"), "ledger": ledger, "holders": holders,
           "versions": versions, "files": header.file_times(run_dir)}
    try:
        rounds.lost_rounds(run)      # a malformed model_restarts: one clear error, never a report that miscounts
        rounds.resume_words(run)     # a malformed resumes record, the same
    except ValueError as e:
        raise ReportInputError(f"{summary_path}: {e}") from None
    # signatures, anchors, every ε recomputed; on any mismatch every ε is withheld (privacy_checks.py)
    privacy_checks.apply_verification(run, privacy_checks.verify_run(run_dir))
    return run


def _holder_ids(run_dir: Path) -> set[int]:
    """Every holder the directory knows: keys.json's, the state directories (holders/<id>/), the server's views."""
    ids = {int(d.name) for d in (run_dir / "holders").glob("*") if d.is_dir() and d.name.isdigit()}
    ids |= {int(p.stem.removeprefix("holder-")) for p in (run_dir / "privacy" / "holders").glob("holder-*.jsonl")
            if p.stem.removeprefix("holder-").isdigit()}
    kp = run_dir / "privacy" / "keys.json"
    if kp.is_file():
        try:
            keys = jsonio.read_json(kp, legacy=True)
            ids |= {int(h) for h in (keys.get("holders") or {}) if str(h).isdigit()} if isinstance(keys, dict) else set()
        except (jsonio.JSONFileError, AttributeError, TypeError):
            pass   # verification reports a bad keys.json; the table lists the holders found elsewhere
    return ids


def _holders(run_dir: Path, not_asked: set = frozenset()) -> dict[str, dict]:
    """Per holder (sampled or not): the server's view ledger (its ε, rounds included / refused / dropped) and the
    holder's own ledger's cap. ``own_epsilon`` is set from the verification (privacy_checks.apply_verification).
    ``not_asked``: rounds whose cohort was too small to be offered (privacy_checks.not_asked_rounds): their "refused"
    view entries are counted as ``not_asked``, not as refusals."""
    holders: dict[str, dict] = {}
    for h in sorted(_holder_ids(run_dir)):
        name, vp, op = f"holder-{h}", run_dir / "privacy" / "holders" / f"holder-{h}.jsonl", run_dir / "holders" / str(h) / "ledger.jsonl"
        row = {"ok": True, "id": h, "in_cohort": vp.is_file(), "own_ledger": op.is_file(),
               "state_dir": (run_dir / "holders" / str(h)).is_dir(), "view_epsilon": 0.0, "own_epsilon": None,
               "cap": None, "included": 0, "refused": 0, "dropped": 0}
        try:
            if vp.is_file():
                es = read_ledger(vp)
                row.update(view_epsilon=_num(es[-1]["epsilon"]) if es else 0.0,
                           included=sum(e["status"] == "included" for e in es),
                           refused=sum(e["status"] == "refused" and privacy_checks.was_asked(e, not_asked) for e in es),
                           not_asked=sum(not privacy_checks.was_asked(e, not_asked) for e in es),
                           dropped=sum(e["status"] == "dropped" for e in es))
            if op.is_file():   # the coordinator strips caps from its own session: the holder's ledger has its cap
                own = read_ledger(op)
                row["cap"] = _num(own[-1]["cap"]) if own and own[-1].get("cap") is not None else None
        except (LedgerError, KeyError, TypeError) as e:
            holders[name] = {"ok": False, "error": str(e)}
            continue
        holders[name] = row
    return holders


def _plots(run: dict, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    entries = run["ledger"]["entries"]
    fig, ax = plt.subplots(figsize=(6, 3.4))
    xs = [e["round"] for e in entries]
    ys = [_num(e["epsilon"]) for e in entries]
    if entries and all(math.isfinite(y) for y in ys):
        ax.plot(xs, ys, marker="o", ms=3)
        ax.set_ylabel(f"cumulative ε (δ = {_num(entries[-1]['delta']):.2g})")
    else:
        ax.text(0.5, 0.5, "ε = ∞ (no DP)" if entries else "no ledger entries", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("round")
    ax.set_title("Privacy spent (server ledger)")
    fig.tight_layout()
    fig.savefig(out / "epsilon.png", dpi=110)
    plt.close(fig)
    names.append("epsilon.png")

    fig, ax = plt.subplots(figsize=(6, 3.4))
    fed, base = (_finite_points(rows, "tokens_seen", "eval_ppl") for rows in (run["metrics"], run["baseline"]))
    overflowed = any(p[1] >= PPL_OVERFLOW for p in fed + base)   # exp of the clamped loss: no measurement, not plotted
    fed, base = ([p for p in pts if p[1] < PPL_OVERFLOW] for pts in (fed, base))
    if overflowed:
        ax.text(0.5, 0.95, "evaluations whose perplexity overflowed are not plotted", ha="center", va="top",
                transform=ax.transAxes, fontsize=8)
    for pts, label in ((fed, "federated"), (base, "centralized baseline")):
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3, label=label)
    unigram = _num(run["summary"].get("unigram_eval_ppl"))
    if (fed or base) and math.isfinite(unigram):
        ax.axhline(unigram, color="grey", ls="--", lw=1, label=f"unigram ({unigram:.4g})")
    ax.set_xlabel("tokens seen")
    ax.set_ylabel("eval perplexity")
    ax.set_yscale("log")
    ax.set_title("Perplexity vs tokens")
    if fed or base:
        ax.legend()
    fig.tight_layout()
    fig.savefig(out / "perplexity.png", dpi=110)
    plt.close(fig)
    names.append("perplexity.png")

    fig, ax = plt.subplots(figsize=(6, 3.4))
    cf = _finite_points(run["metrics"], "round", "clip_fraction")  # rounds as the files number them
    if cf:
        ax.plot([c[0] for c in cf], [c[1] for c in cf], marker="o", ms=3)
    else:   # why it is empty is said in the Plots section
        ax.text(0.5, 0.5, "no clip fraction recorded (see the report's Plots section)", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("round")
    ax.set_ylabel("fraction of holders clipped")
    ax.set_title("Clip fraction")
    fig.tight_layout()
    fig.savefig(out / "clip_fraction.png", dpi=110)
    plt.close(fig)
    names.append("clip_fraction.png")
    return names


def _finite_points(rows: list[dict], x: str, y: str) -> list[tuple[float, float]]:
    """(x, y) of the rows where both are finite numbers (non-finite values are in the warnings, not the plot)."""
    pts = [(_num(r.get(x)), _num(r.get(y))) for r in rows if r.get(x) is not None and r.get(y) is not None]
    return [(a, b) for a, b in pts if math.isfinite(a) and math.isfinite(b)]


def _md(sections: list) -> str:
    lines = []
    for title, blocks in sections:
        lines.append(f"## {title}\n")
        for b in blocks:
            if isinstance(b, tuple) and b[0] == "table":
                rows = b[1]
                lines.append("| " + " | ".join(rows[0]) + " |")
                lines.append("|" + "---|" * len(rows[0]))
                lines.extend("| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |"
                             for r in rows[1:])
                lines.append("")
            elif isinstance(b, tuple) and b[0] == "img":
                lines.append(f"![{b[1]}]({b[1]})\n")
            else:
                lines.append(str(b) + "\n")
    return "\n".join(lines)


def _html(title: str, sections: list, out: Path, alarm: str | None) -> str:
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
             "body{font-family:sans-serif;max-width:60em;margin:2em auto;line-height:1.45}table{border-collapse:collapse}"
             "td,th{border:1px solid #bbb;padding:.2em .6em}.alarm{background:#b00;color:#fff;padding:1em;font-weight:bold}"
             "</style></head><body>", f"<h1>{html.escape(title)}</h1>"]
    if alarm:
        parts.append(f"<div class='alarm'>{html.escape(alarm)}</div>")
    for sec_title, blocks in sections:
        parts.append(f"<h2>{html.escape(sec_title)}</h2>")
        for b in blocks:
            if isinstance(b, tuple) and b[0] == "table":
                rows = b[1]
                parts.append("<table><tr>" + "".join(f"<th>{html.escape(str(c))}</th>" for c in rows[0]) + "</tr>")
                parts.extend("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows[1:])
                parts.append("</table>")
            elif isinstance(b, tuple) and b[0] == "img":
                data = base64.b64encode((out / b[1]).read_bytes()).decode("ascii")
                parts.append(f"<p><img alt='{html.escape(b[1])}' src='data:image/png;base64,{data}'></p>")
            else:
                parts.append(f"<p>{html.escape(str(b))}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


# every file `securefed report` writes into its folder (_render, _plots): a folder holding these and nothing else is
# an earlier report, the one kind of folder --out may replace as a whole
REPORT_FILES = frozenset({"report.json", "report.md", "report.html", "epsilon.png", "perplexity.png", "clip_fraction.png"})


class ReportOutError(ReportInputError):
    """``--out`` names a place the report must not replace (the run directory, a folder around it, a file, a folder
    that is not an earlier report); nothing was written and nothing removed."""


def _is_earlier_report(d: Path) -> bool:
    """``d`` holds only files a report writes, and its report.json, if there, has a report's keys: an earlier
    report (what replacing it loses, re-rendering writes again; a report folder whose report.json was deleted is
    one too)."""
    entries = list(d.iterdir())
    if not all(e.name in REPORT_FILES and e.is_file() and not e.is_symlink() for e in entries):
        return False
    if not (d / "report.json").exists():
        return True
    try:
        rep = jsonio.loads((d / "report.json").read_text(encoding="utf-8"), legacy=True)
    except (OSError, ValueError):   # absent, unreadable, not UTF-8, not JSON
        return False
    return isinstance(rep, dict) and {"run_dir", "ledger_head", "verification", "facts"} <= rep.keys()


def check_report_out(run_dir: str | Path, final: str | Path) -> None:
    """Refuse (ReportOutError, one line) a report folder whose replacement would lose anything: the run directory
    itself, a folder that contains it, a folder inside one of the run's own entries, a file, or a non-empty folder
    that is not an earlier report. Absent, empty, or an earlier report: the report replaces it as a whole."""
    final = Path(final)
    run = Path(run_dir).resolve()
    default = Path(run_dir) / "report"
    why = uncreatable(final)
    if why:
        raise ReportOutError(f"--out {final} cannot be created: {why}; choose another folder (default: {default})")
    why = out_problem(final, _is_earlier_report)
    if why == "symlink":
        raise ReportOutError(f"--out {final} is a symbolic link; name a real folder (default: {default})")
    target = final.resolve()
    if target == run:
        raise ReportOutError(f"--out {final} is the run directory itself; the report replaces its folder as a whole, "
                             f"so it would delete the run: choose a new folder (default: {default})")
    if target in run.parents:
        raise ReportOutError(f"--out {final} contains the run directory {run_dir}; the report replaces its folder as a "
                             f"whole, so it would delete the run: choose a new folder (default: {default})")
    if run in target.parents:
        top = run / target.relative_to(run).parts[0]
        if top != target and (top.exists() or top.is_symlink()):
            raise ReportOutError(f"--out {final} is inside the run's own {top.name}/; a report there would change the "
                                 f"run's files: choose a new folder (default: {default})")
    if why == "file":
        raise ReportOutError(f"--out {final} is a file, not a folder; the report would replace it: choose a new folder "
                             f"(default: {default})")
    if why is not None:
        raise ReportOutError(f"--out {final} is not empty and is not an earlier report (it {why}); the report "
                             f"replaces its folder as a whole: choose a new or empty folder (default: {default})")


def render_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict:
    """Write the report files; returns the report.json content (``ledger_ok`` says if the chain verified).

    The folder (default RUN_DIR/report) is built aside and replaces ``out_dir`` as a whole; ``check_report_out``
    first refuses (ReportOutError) any ``out_dir`` whose replacement would lose files."""
    final = Path(out_dir) if out_dir is not None else Path(run_dir) / "report"
    if Path(run_dir).is_dir():   # (not a directory: load_run says so)
        check_report_out(run_dir, final)
    run = load_run(Path(run_dir))
    final.parent.mkdir(parents=True, exist_ok=True)
    out = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        report = _render(run, out)
        replace_dir(out, final)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return report


def render_run_report(run_dir: str | Path, *, command: str) -> bool:
    """The report a run writes at its end (`securefed simulate`, `securefed server`, and their --resume of a run
    stopped before it): True when written. Else one line on stderr says why and how to write it, and the run itself
    stays whole: a user's file in RUN_DIR/report is kept (ReportOutError); a full disk was an OSError traceback after
    a finished run."""
    import sys

    try:
        render_report(run_dir)
        return True
    except ReportOutError as e:
        print(f"securefed {command}: the report was not written: {e}; `securefed report {run_dir} --out NEW` writes it "
              "elsewhere", file=sys.stderr)
    except (ReportInputError, OSError) as e:
        why = os_error_text(e) if isinstance(e, OSError) else str(e)
        print(f"securefed {command}: the report was not written: {why}; `securefed report {run_dir}` writes it once it "
              "can", file=sys.stderr)
    return False


def where_line(run_dir: str | Path, written: bool) -> str:
    """The line a finished run's command ends with (`securefed simulate` on stdout after the summary, `securefed
    server` on stderr before it, and their report-only --resume): where the run is and its report — named only where
    it was written this time (else render_run_report's own line said why not, and how to write it)."""
    report = f"report: {Path(run_dir) / 'report' / 'report.html'}" if written else "no report written: see above"
    return f"run directory: {run_dir}  ({report})"


def _render(run: dict, out: Path) -> dict:
    plots = _plots(run, out)
    facts = text.facts(run)
    head = header.run_section(run)
    warned = header.warnings_section(run)
    sections = [head] + ([warned] if warned else []) + text.sections(run, facts) + [
        ("Plots", rounds.clip_words(run, facts) + [("img", p) for p in plots])]
    alarm = None
    if not run["ledger"]["ok"]:
        alarm = (f"PRIVACY LEDGER NOT VERIFIED: {run['ledger']['error']}. No ε is stated in this report; the privacy "
                 "figures below cannot be trusted.")
    report = {"run_dir": run["run_dir"], "ledger_ok": run["ledger"]["ok"], "ledger_error": run["ledger"]["error"],
              "ledger_head": run["ledger"]["head"], "ledger_entries": run["ledger"].get("entries_count"),
              "verification": privacy_checks.verification_dict(run["verification"]), "facts": facts,
              "holders": run["holders"], "plots": plots, "run": header.run_facts(run), "warnings": header.run_warnings(run),
              "sections": [[t, [b if isinstance(b, str) else list(b) for b in bs]] for t, bs in sections]}
    (out / "report.json").write_text(jsonio.dumps(report, indent=2, default=str) + "\n")
    md = "# securefed privacy and training report\n\n" + (f"> **{alarm}**\n\n" if alarm else "") + _md(sections)
    (out / "report.md").write_text(md)
    (out / "report.html").write_text(_html("securefed privacy and training report", sections, out, alarm))
    return report
