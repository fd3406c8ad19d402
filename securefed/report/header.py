"""The report's opening: the run's facts, standing alone, and the warnings it raised.

A reader holding only report.md must be able to place the run: which run (id, start and finish,
versions), what ran (the preset it is closest to and what was changed, model size, holders, tokens,
privacy and aggregation mode), how well (federated and centralized perplexity, their ratio, and the
unigram perplexity a model must beat), how long (wall time by phase), and what went wrong.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from pathlib import Path
from typing import Any

from securefed.progress import format_seconds
from securefed.runtime.health import PPL_OVERFLOW, format_ppl, update_shortfall
from securefed.report.rounds import lost_rounds, resume_words, rounds_that_updated
from securefed.report.text import _find, _fmt

__all__ = ["file_times", "run_facts", "run_section", "run_warnings", "warnings_section"]


def file_times(run_dir: Path) -> dict[str, str]:
    """UTC modification times of the files that date a run: config.yaml (written when it started) and
    summary.json (written when it finished)."""
    out = {}
    for name in ("config.yaml", "summary.json"):
        p = Path(run_dir) / name
        if p.is_file():
            out[name] = dt.datetime.fromtimestamp(p.stat().st_mtime, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    return out


def _num(v: Any) -> float | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    return {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}.get(v) if isinstance(v, str) else None


def run_facts(run: dict) -> dict:
    """Who, when, what and how big: everything a reader needs to place the run without other files."""
    from securefed.runtime.config import closest_preset

    cfg, summary, metrics = run["config"], run["summary"], run["metrics"]
    fed = cfg.get("federation") if isinstance(cfg.get("federation"), dict) else {}
    preset, changed = closest_preset(cfg) if cfg else ("unknown (no config.yaml)", [])
    fed_ppl, central = _num(summary.get("fed_eval_ppl")), _num(summary.get("central_eval_ppl"))
    ratio = _num(summary.get("fed_over_central_ppl"))
    if ratio is None and fed_ppl is not None and central:
        ratio = fed_ppl / central
    if not _measured(fed_ppl) or not _measured(central):   # an overflowed perplexity has no ratio
        ratio = None
    holders = fed.get("n_holders")
    return {
        "run_id": Path(run["run_dir"]).name,
        "started": run.get("files", {}).get("config.yaml"),
        "finished": run.get("files", {}).get("summary.json"),
        "versions": run.get("versions", {}),
        "preset": preset,
        "preset_changes": changed,
        "model_preset": summary.get("model_preset") or _find(cfg.get("model", {}), "preset"),
        "model_params": summary.get("model_params"),
        "init_from": summary.get("init_from") or _find(cfg.get("model", {}), "init_from"),
        "init_sha256": summary.get("init_sha256"),
        "holders": holders,
        "cohort_size": fed.get("clients_per_round") or holders,
        "rounds": rounds_that_updated(run),
        "rounds_planned": fed.get("rounds"),
        "rounds_aborted": sum(1 for m in metrics if m.get("aborted")),
        "rounds_lost": sum(len(lr["rounds"]) for lr in lost_rounds(run)),
        "resumes": resume_words(run),
        "tokens": summary.get("tokens", metrics[-1].get("tokens_seen") if metrics else None),
        "privacy_mode": summary.get("privacy_mode") or _find(cfg.get("privacy", {}), "mode"),
        "aggregation": summary.get("aggregation") or _find(cfg.get("aggregation", {}), "mode"),
        "dp_sgd": bool((((cfg.get("train") or {}) if isinstance(cfg.get("train"), dict) else {}).get("dp_sgd") or {}).get("enabled")),
        "fed_eval_ppl": fed_ppl,
        "fed_eval_loss": last_eval_loss(metrics),
        "central_eval_ppl": central,
        "central_eval_loss": last_eval_loss(run["baseline"]),
        "fed_over_central_ppl": ratio,
        "unigram_eval_ppl": _num(summary.get("unigram_eval_ppl")),
        "wall_seconds": _num(summary.get("wall_seconds")),
        "phase_seconds": summary.get("phase_seconds") if isinstance(summary.get("phase_seconds"), dict) else {},
    }


def _measured(ppl: float | None) -> bool:
    return ppl is None or (math.isfinite(ppl) and ppl < PPL_OVERFLOW)


def last_eval_loss(rows: list[dict]) -> Any:
    """The eval_loss of the last row that has one (the loss behind the final perplexity)."""
    return next((r["eval_loss"] for r in reversed(rows) if r.get("eval_loss") is not None), None)


def _seconds(v: Any) -> str:
    s = _num(v)
    return "—" if s is None else format_seconds(s)


def run_section(run: dict) -> tuple[str, list]:
    r = run_facts(run)
    preset = r["preset"] + (f" (changed: {', '.join(r['preset_changes'][:6])}"
                            + (" …" if len(r["preset_changes"]) > 6 else "") + ")" if r["preset_changes"] else "")
    versions = ", ".join(f"{k} {v}" for k, v in sorted(r["versions"].items())) or "not recorded"
    params = r["model_params"]
    model = f"{_fmt(r['model_preset'])}" + (f", {params:,} parameters" if isinstance(params, int) else "")
    phases = ", ".join(f"{k} {_seconds(v)}" for k, v in r["phase_seconds"].items())
    wall = _seconds(r["wall_seconds"]) + (f" ({phases})" if phases else "")
    ratio = r["fed_over_central_ppl"]
    missed = ([f"{r['rounds_aborted']} aborted"] if r["rounds_aborted"] else []) + (
        [f"{r['rounds_lost']} lost on a resume"] if r["rounds_lost"] else [])
    rows = [["fact", "value"],
            ["run id", r["run_id"]],
            ["started / finished", f"{r['started'] or '—'} / {r['finished'] or 'not finished (no summary.json)'}"],
            ["versions", versions],
            ["run preset", preset],
            ["model", model],
            ["initial weights", "random (the run's seed)" if not r["init_from"] else
             f"{r['init_from']}" + (f" (θ0 sha256 {str(r['init_sha256'])[:16]}…)" if r["init_sha256"] else "")
             + ": a checkpoint this run's privacy guarantees do not cover, which must be public (protocols/dp.md §13)"],
            ["data holders (cohort per round)", f"{_fmt(r['holders'])} ({_fmt(r['cohort_size'])})"],
            ["rounds that updated the model / planned", f"{_fmt(r['rounds'])} / {_fmt(r['rounds_planned'])}"
             + (f" ({', '.join(missed)}: see Rounds that did not update the model)" if missed else "")],
            ["stopped and resumed", r["resumes"]],
            ["tokens (federated)", f"{r['tokens']:,}" if isinstance(r["tokens"], int) else _fmt(r["tokens"])],
            ["privacy / aggregation", f"{_fmt(r['privacy_mode'])}" + (" (holder level; record-level DP-SGD in the holders)"
                                                                        if r["dp_sgd"] else "") + f" / {_fmt(r['aggregation'])}"],
            ["eval perplexity: federated / centralized", f"{format_ppl(r['fed_eval_ppl'], r['fed_eval_loss'])} / "
                                                         f"{format_ppl(r['central_eval_ppl'], r['central_eval_loss'])}"],
            ["federated / centralized perplexity", _fmt(ratio) + (" (1.0 = as good as centralized)" if ratio else "")],
            ["unigram perplexity of the eval set", _fmt(r["unigram_eval_ppl"])
             + " (what token frequencies alone achieve: a model must be below it)"],
            ["wall time", wall]]
    return ("Run", [("table", rows)])


def run_warnings(run: dict) -> list[dict]:
    """Every warning of the run: the ``warnings`` the engine recorded in metrics.jsonl rows; for a run
    whose rows carry none (recorded before warnings existed), recomputed here with RunHealth. The
    baseline's rows are checked the same way (step = baseline step)."""
    from securefed.runtime.health import RunHealth

    metrics, summary = run["metrics"], run["summary"]
    unigram = _num(summary.get("unigram_eval_ppl"))
    unigram = unigram if unigram and math.isfinite(unigram) and unigram > 0 else None
    planned = (run["config"].get("federation") or {}).get("rounds") if isinstance(run["config"].get("federation"), dict) else None
    out = []
    if any("warnings" in m for m in metrics):
        for m in metrics:
            out.extend({"where": f"round {m.get('round')}", "warning": _overflow_words(w, m), "recorded": True}
                       for w in m.get("warnings") or [])
            if m.get("aborted") and not any(str(w).startswith("round aborted: ") for w in m.get("warnings") or []):
                # recorded before aborted rounds were warnings (or a restart's row, never checked): said here
                out.append({"where": f"round {m.get('round')}", "recorded": False,
                            "warning": f"round aborted: round {m.get('round')} did not update the model: {m['aborted']}"})
    else:
        health = RunHealth(unigram_ppl=unigram, rounds_planned=planned if isinstance(planned, int) else None)
        for m in metrics:
            out.extend({"where": f"round {m.get('round')}", "warning": w, "recorded": False} for w in health.check(m))
    short = update_shortfall(metrics, planned if isinstance(planned, int) else None)
    if short and (metrics or run["summary"]):   # a run that started; an empty directory's report says so elsewhere
        out.insert(0, {"where": "run", "warning": short, "recorded": False})
    if run["config"].get("deterministic_secrets") is True:   # runtime/parties.py: every secret from the seed
        out.insert(0, {"where": "run", "recorded": False, "warning": "deterministic secrets: NOT private: for tests — "
                       "every noise sample, mask and DP-SGD seed of this run is derived from the configuration's seed "
                       f"({run['config'].get('seed')}, in config.yaml); whoever reads it can recompute them all"})
    base = RunHealth(unigram_ppl=unigram)
    for b in run["baseline"]:
        out.extend({"where": f"baseline step {b.get('step')}", "warning": w, "recorded": False} for w in base.check(b))
    return out


_PPL_IN_WARNING = re.compile(r"eval perplexity ([0-9.eE+-]+|inf|nan)\b")


def _overflow_words(warning: str, row: dict) -> str:
    """A recorded warning with an overflowed perplexity (≥ 1e300: exp of the clamped loss) said as such."""
    def sub(m: re.Match) -> str:
        try:
            x = float(m.group(1))
        except ValueError:
            return m.group(0)
        return m.group(0) if math.isfinite(x) and x < PPL_OVERFLOW else f"eval perplexity {format_ppl(x, row.get('eval_loss'))}"
    return _PPL_IN_WARNING.sub(sub, str(warning))


def warnings_section(run: dict) -> tuple[str, list] | None:
    """"Warnings raised during the run": each kind once, with where it held (None when there are none)."""
    from securefed.runtime.health import warning_kind

    ws = run_warnings(run)
    if not ws:
        return None
    by_kind: dict[str, list[dict]] = {}
    for w in ws:
        by_kind.setdefault(warning_kind(w["warning"]), []).append(w)
    blocks: list = ["THIS RUN WENT WRONG. " + ("Recorded while it ran (metrics.jsonl, field warnings)."
                    if all(w["recorded"] for w in ws if w["where"].startswith("round"))
                    else "Found by re-checking the metrics." if not any(w["recorded"] for w in ws)
                    else "Recorded while it ran (metrics.jsonl, field warnings), and found by re-checking the metrics.")]
    blocks += [f"WARNING: {w['warning']}." for w in ws if w["where"] == "run"]   # the run as a whole, above the table
    rows = [["warning", "where", "first occurrence"]]
    for kind, items in by_kind.items():
        where = ", ".join(i["where"] for i in items[:8]) + (f" and {len(items) - 8} more" if len(items) > 8 else "")
        rows.append([kind, where, items[0]["warning"].split(": ", 1)[-1]])
    blocks.append(("table", rows))
    return ("Warnings raised during the run", blocks)
