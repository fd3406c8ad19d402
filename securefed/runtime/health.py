"""A run that goes wrong says so while it runs.

    health = RunHealth(unigram_ppl=data.unigram_eval_ppl, rounds_planned=R)   # + start_ppl= θ0's, if evaluated
    for each round:  row["warnings"] = health.check(row)      # [] when all is well
                     print each warning loudly; metrics.jsonl keeps them; the report shows them

Four conditions, checked on every metrics row (a federated round or a baseline eval point):

* ``non-finite loss``: train_loss or eval_loss is NaN or ±∞ — training has diverged.
* ``perplexity above start``: eval perplexity is above its starting value (the untrained model's, when
  given, else the first evaluation's) — the model is getting worse, not better.
* ``perplexity above unigram``: eval perplexity is above the unigram perplexity of the eval set — the
  model predicts worse than token frequencies alone (e.g. DP noise or clipping has swamped the updates).
  A healthy run starts above it (an untrained model is near the vocabulary size; the demo's first
  evaluation is 2x the unigram) and falls through it, so this fires only when the perplexity *rose*
  above it (an earlier evaluation was at or below it), is above it and not improving (no lower than
  the previous evaluation), or is above it at the last planned round.
* ``round aborted``: the row records an aborted round (``aborted``: its reason) — the model did not move.

And one over the whole run, :func:`update_shortfall`: fewer planned rounds updated the model than were
planned (aborted, or never run).

A perplexity is printed by :func:`format_ppl`: ``exp(min(loss, 700))`` overflows to ~1e304, which is no
measurement, so anything ≥ 1e300 or non-finite reads "overflow (loss L)".

Each warning is one string ``"<kind>: <detail>"`` with ``<kind>`` one of :data:`KINDS`, so a reader
(the report) can group them; the detail gives the numbers and what to check.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["KINDS", "RunHealth", "as_number", "format_ppl", "update_shortfall", "warning_kind"]

KINDS = ("non-finite loss", "perplexity above start", "perplexity above unigram", "round aborted",
         "rounds without an update")
PPL_OVERFLOW = 1e300  # the evaluator caps the loss at 700 before exp: e^700 ≈ 1.014e304 is a clamp, not a perplexity


def format_ppl(ppl: Any, loss: Any = None) -> str:
    """A perplexity for people: "overflow (loss L)" when it is ≥ 1e300 or not finite, else 4 significant digits
    ("—" when absent)."""
    x = as_number(ppl)
    if x is None:
        return "—"
    if math.isfinite(x) and x < PPL_OVERFLOW:
        return f"{x:.4g}"
    lv = as_number(loss)
    return f"overflow (loss {lv:.4g})" if lv is not None else "overflow (loss not recorded)"


def update_shortfall(rows: list[dict], rounds_planned: int | None) -> str | None:
    """The run-level warning when fewer than the planned rounds updated the model (None when all did)."""
    if not isinstance(rounds_planned, int) or isinstance(rounds_planned, bool) or rounds_planned < 1:
        return None
    rounds = [r for r in rows if isinstance(r.get("round"), int)]
    aborted = sorted(r["round"] for r in rounds if r.get("aborted"))
    updated = len({r["round"] for r in rounds if not r.get("aborted")})
    missing = rounds_planned - len({r["round"] for r in rounds})
    if updated >= rounds_planned:
        return None
    parts = ([f"{len(aborted)} aborted: round{'s' if len(aborted) > 1 else ''} {', '.join(map(str, aborted))}"]
             if aborted else []) + ([f"{missing} never run"] if missing > 0 else [])
    return (f"rounds without an update: only {updated} of {rounds_planned} planned rounds updated the model"
            + (f" ({'; '.join(parts)})" if parts else "") + "; the model is not what the configuration planned")


def warning_kind(warning: str) -> str:
    """The ``<kind>`` of a warning string (the text before the first ': ')."""
    return warning.split(": ", 1)[0]


def as_number(v: Any) -> float | None:
    """A metrics value as a float ("inf"/"-inf"/"nan" strings included); None when absent or not a number."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float)):
        return float(v)
    return {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}.get(v) if isinstance(v, str) else None


class RunHealth:
    """Feed it each metrics row in order; ``check`` returns the warnings that hold for that row."""

    def __init__(self, *, unigram_ppl: float | None = None, start_ppl: float | None = None,
                 rounds_planned: int | None = None) -> None:
        for name, v in (("unigram_ppl", unigram_ppl), ("start_ppl", start_ppl)):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0):
                raise ValueError(f"{name} must be a positive number or None, got {v!r}")
        self.unigram_ppl = None if unigram_ppl is None or not math.isfinite(unigram_ppl) else float(unigram_ppl)
        self.start_ppl = None if start_ppl is None or not math.isfinite(start_ppl) else float(start_ppl)
        self.rounds_planned = rounds_planned
        self._previous: float | None = None  # the previous evaluation's perplexity
        self._beat_unigram = False           # some evaluation was at or below the unigram perplexity

    def check(self, row: dict) -> list[str]:
        where = f"round {row['round']}" if "round" in row else f"step {row.get('step', '?')}"
        out = []
        if row.get("aborted"):
            out.append(f"round aborted: {where} did not update the model: {row['aborted']}")
        bad = [k for k in ("train_loss", "eval_loss") if (v := as_number(row.get(k))) is not None and not math.isfinite(v)]
        if bad:
            out.append(f"non-finite loss: {' and '.join(f'{k} is {row[k]}' for k in bad)} in {where}; training has "
                       "diverged (lower train.lr, check privacy.clip and the DP noise)")
        ppl = as_number(row.get("eval_ppl"))
        if ppl is None:
            return out
        if self.start_ppl is None:
            if math.isfinite(ppl):
                self.start_ppl = ppl  # the first evaluation is the reference from now on
        elif not ppl <= self.start_ppl:  # NaN counts as worse
            out.append(f"perplexity above start: eval perplexity {format_ppl(ppl, row.get('eval_loss'))} in {where} is "
                       f"above its starting value {self.start_ppl:.4g}; the model is getting worse (check lr, clip and DP noise)")
        if self.unigram_ppl is not None:
            if not ppl <= self.unigram_ppl:
                why = ("it was below it before" if self._beat_unigram
                       else "and not improving" if self._previous is not None and not ppl < self._previous
                       else "at the last planned round" if self.rounds_planned is not None
                       and row.get("round") == self.rounds_planned else None)
                if why:
                    out.append(f"perplexity above unigram: eval perplexity {format_ppl(ppl, row.get('eval_loss'))} in "
                               f"{where} is above the unigram "
                               f"perplexity {self.unigram_ppl:.4g} ({why}); the model predicts worse than token "
                               "frequencies alone")
            else:
                self._beat_unigram = True
        self._previous = ppl
        return out
