"""Render an audit result as Markdown (report.md) and self-contained HTML (report.html)."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

__all__ = ["render_markdown", "render_html", "write_report"]

_COLOURS = {"MITIGATED": "#1a7f37", "DOCUMENTED-RESIDUAL": "#9a6700", "VULNERABLE": "#cf222e"}


def _num(v, fmt="{:.2f}") -> str:
    if v is None:
        return "—"
    if isinstance(v, float) and math.isinf(v):
        return "∞"
    return fmt.format(v) if isinstance(v, (int, float)) else str(v)


def _privacy_rows(priv: dict) -> list[list[str]]:
    rows = []
    for r in priv["table"]:
        rows.append([r["run"], _num(r["accountant_epsilon"]), _num(r["epsilon_lower_bound"]) + f" ({r['confidence']:.0%})",
                     r["one_run_correct"],
                     "—" if r["exposure_inserted"] is None else
                     f"{r['exposure_inserted']:.2f} / {r['exposure_control']:.2f} (max {r['exposure_space_bits']:.1f})",
                     _num(r["lm_accountant_epsilon"]), _num(r["lm_eval_ppl"], "{:.1f}")])
    return rows


PRIV_HEAD = ["run", "accountant ε (one-run)", "ε lower bound (conf.)", "correct guesses",
             "exposure inserted / control, bits", "accountant ε (LM run)", "LM eval ppl"]


def render_markdown(res: dict) -> str:
    lines = [f"# securefed audit report ({res['profile']} profile)", "",
             f"Date: {res['date']} · securefed {res['securefed_version']} · Python {res['python']} · "
             f"{res['seconds']} s. Configuration: `config.json` beside this file.", "",
             "Verdicts: MITIGATED (the attack ran against the real code and failed), DOCUMENTED-RESIDUAL (it "
             "succeeds as far as the threat model says it may; numbers measure how far), VULNERABLE (it defeats a "
             "stated defence; fix given).", "", "## Security scenarios", "",
             "| id | scenario | verdict | threats |", "|---|---|---|---|"]
    for f in res["findings"]:
        lines.append(f"| {f['id']} | {f['title']} | **{f['verdict']}** | {', '.join(f['threats'])} |")
    for f in res["findings"]:
        lines += ["", f"### {f['id']}: {f['title']} — {f['verdict']}", "", f["summary"], "",
                  "Evidence:", "```json", json.dumps(f["evidence"], indent=1, default=str, ensure_ascii=False), "```"]
        if f["fix"]:
            lines += ["", f"**Fix:** {f['fix']}"]
    priv = res.get("privacy")
    if priv:
        lines += ["", "## Empirical privacy audit", "",
                  "One-run audit: Steinke–Nasr–Jagielski (2023) with canary holders (Andrew et al. 2024), each "
                  "included with probability ½, scored by the projection of the released sums on its direction. "
                  "Exposure: Secret Sharer (Carlini et al. 2019) of canaries inserted into holder 1's rows of a "
                  "`securefed simulate` run, ranked over the whole secret space; control canaries were never inserted.",
                  "", "| " + " | ".join(PRIV_HEAD) + " |", "|" + "---|" * len(PRIV_HEAD)]
        lines += ["| " + " | ".join(r) + " |" for r in _privacy_rows(priv)]
        lines += ["", "Reading the table: the one-run bound holds with the stated confidence for the audited mechanism "
                  "(holder-level, add/remove, q = 1, every round released to the auditor); a bound below the accountant's "
                  "ε is consistent with the accountant, one above it would prove it wrong. Without DP the bound is "
                  "limited only by the number of canaries. The LM runs have 4 holders: holder-level DP noise of that "
                  "size leaves the model near its initialisation (perplexity column), so their exposure shows that "
                  "nothing was memorised, not a useful privacy-utility trade-off; the quantitative check is the "
                  "one-run bound.", "", "Settings:", "```json", json.dumps(priv["settings"], default=str), "```"]
        for k, v in priv["lm_runs"].items():
            lines += [f"- LM run `{k}`: {v['dp']}, {v['rows_with_canary']} of {v['holder1_rows']} rows of holder 1 carry a "
                      f"canary, {v['seconds']} s{'; ' + v['note'] if v.get('note') else ''}; overrides: "
                      f"`{' '.join(v['overrides'])}`"]
    return "\n".join(lines) + "\n"


def render_html(res: dict) -> str:
    e = html.escape
    parts = [f"<h1>securefed audit report ({e(res['profile'])} profile)</h1>",
             f"<p>Date: {e(res['date'])} · securefed {e(res['securefed_version'])} · {res['seconds']} s</p>",
             "<h2>Security scenarios</h2><table><tr><th>id</th><th>scenario</th><th>verdict</th><th>threats</th></tr>"]
    for f in res["findings"]:
        c = _COLOURS.get(f["verdict"], "#000")
        parts.append(f"<tr><td>{e(f['id'])}</td><td>{e(f['title'])}</td><td style='color:{c};font-weight:bold'>"
                     f"{e(f['verdict'])}</td><td>{e(', '.join(f['threats']))}</td></tr>")
    parts.append("</table>")
    for f in res["findings"]:
        parts.append(f"<h3>{e(f['id'])}: {e(f['title'])} — <span style='color:{_COLOURS.get(f['verdict'])}'>"
                     f"{e(f['verdict'])}</span></h3><p>{e(f['summary'])}</p>"
                     f"<pre>{e(json.dumps(f['evidence'], indent=1, default=str, ensure_ascii=False))}</pre>")
        if f["fix"]:
            parts.append(f"<p><b>Fix:</b> {e(f['fix'])}</p>")
    priv = res.get("privacy")
    if priv:
        parts.append("<h2>Empirical privacy audit</h2><table><tr>" + "".join(f"<th>{e(h)}</th>" for h in PRIV_HEAD) + "</tr>")
        for r in _privacy_rows(priv):
            parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>")
        parts.append("</table><pre>" + e(json.dumps(priv["settings"], default=str)) + "</pre>")
    style = ("body{font-family:system-ui,sans-serif;max-width:70em;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}"
             "pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:85%}")
    return ("<!doctype html><html><head><meta charset='utf-8'><title>securefed audit</title>"
            f"<style>{style}</style></head><body>" + "\n".join(parts) + "</body></html>\n")


def write_report(res: dict, out: Path) -> None:
    (Path(out) / "report.md").write_text(render_markdown(res))
    (Path(out) / "report.html").write_text(render_html(res))
