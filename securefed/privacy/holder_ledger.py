"""A holder's own privacy ledger: its entry format and the one rule that says what each round cost it
(protocols/dp.md §7.2).

A holder keeps this ledger itself (simulation: ``RUN_DIR/holders/<id>/ledger.jsonl``; deployment: its
state directory), signed with its own Ed25519 key, one entry per decision:

- ``released`` — written durably *before* it sends its masked input, with a conservative event (the
  fewest survivors it would accept, so the most it can cost);
- ``settled`` — optional, later, for the same round: the event at the survivor count it then learned;
- ``refused`` — it sent nothing (its cap, a policy); such a round costs nothing.

:func:`holder_effective_events` turns the entries into the events the holder's ε composes; the holder's
budget code and the verifier both use it, so they cannot disagree on the rule.
"""

from __future__ import annotations

import functools
from typing import Iterable, Sequence

from securefed.privacy.accountant import Accountant, RoundEvent
from securefed.privacy.ledger import LedgerError, decode_floats
from securefed.privacy.rdp import clamp_epsilon

__all__ = ["HOLDER_STATUSES", "REQUIRED_FIELDS", "check_holder_entry", "holder_effective_events", "holder_epsilon",
           "record_level_epsilon", "hidden_batch_rows", "history_extends", "record_level_entry", "record_level_problem",
           "record_unit", "public_sample_rate", "UNITS", "RECORD_RELATION", "signed_record_units"]

HOLDER_STATUSES = ("refused", "released", "settled")
REQUIRED_FIELDS = ("version", "role", "run_id", "holder_id", "round", "status", "event", "epsilon", "cap", "delta",
                   "accountant", "accountant_version", "mode", "mechanism", "clip", "noise_multiplier", "ring_bits",
                   "survivors", "reason")


def _where(e: dict) -> str:
    return f"entry {e.get('seq')} (round {e.get('round')})"


def check_holder_entry(e: dict) -> None:
    """LedgerError unless ``e`` is a well-formed holder-own entry (fields, types, status)."""
    if not isinstance(e, dict):
        raise LedgerError("holder ledger entry is not an object")
    missing = [k for k in REQUIRED_FIELDS if k not in e]
    if missing:
        raise LedgerError(f"{_where(e)} lacks {', '.join(missing)}")
    if e["version"] != 1 or e["role"] != "holder":
        raise LedgerError(f"{_where(e)} is not a version-1 holder entry")
    if e["status"] not in HOLDER_STATUSES:
        raise LedgerError(f"{_where(e)} has unknown status {e['status']!r}")
    for k in ("holder_id", "round"):
        if isinstance(e[k], bool) or not isinstance(e[k], int):
            raise LedgerError(f"{_where(e)}: {k} must be an int")
    if e["round"] < 1:
        raise LedgerError(f"{_where(e)}: rounds are numbered from 1")
    if not isinstance(e["run_id"], str):
        raise LedgerError(f"{_where(e)}: run_id must be a hex string")
    if e["survivors"] is not None and (isinstance(e["survivors"], bool) or not isinstance(e["survivors"], int)):
        raise LedgerError(f"{_where(e)}: survivors must be an int or null")
    try:
        RoundEvent.from_dict(e["event"])
    except (ValueError, TypeError) as err:
        raise LedgerError(f"{_where(e)}: malformed event ({err})") from None


def holder_effective_events(entries: Iterable[dict]) -> list[RoundEvent]:
    """The events a holder's ε composes, in ledger order (protocols/dp.md §7.2).

    Each ``released`` entry is one release; a later ``settled`` entry of the same round replaces the
    event of that round's most recent unsettled release; ``refused`` entries cost nothing. A ``settled``
    entry without an open release of its round is malformed (LedgerError): settling cannot create or
    re-price a release twice.
    """
    events: list[RoundEvent] = []
    open_release: dict[int, int] = {}  # round -> index in events of its latest unsettled release
    for e in entries:
        status, r = e.get("status"), e.get("round")
        if status == "refused":
            continue
        if status not in ("released", "settled"):
            raise LedgerError(f"{_where(e)} has unknown status {status!r}")
        try:
            ev = RoundEvent.from_dict(e["event"])
        except (KeyError, ValueError, TypeError):
            raise LedgerError(f"{_where(e)}: malformed event") from None
        if status == "released":
            open_release[r] = len(events)
            events.append(ev)
        else:
            if r not in open_release:
                raise LedgerError(f"{_where(e)} settles round {r}, which has no unsettled release")
            events[open_release.pop(r)] = ev
    return events


def holder_epsilon(entries: Sequence[dict], delta: float) -> float:
    """The holder's ε at ``delta`` after ``entries`` (RDP, no amplification: events carry q = 1)."""
    return Accountant("rdp").epsilon(float(decode_floats(delta)), holder_effective_events(entries))


# ------------------------------------------------------------------ record-level DP-SGD (dp.md §7.2)
def record_level_epsilon(history: Sequence[Sequence[float]], delta: float) -> float:
    """Record-level ε at ``delta`` of the (σ, q, steps) ``history``, by the accountant the holder's DP-SGD optimizer
    steps (Opacus RDP). A pure function of its arguments, remembered: a holder asks it of one history at the end of
    training and again when it signs the release (and at the Offer under a cap), ≈ 0.1–0.5 s each (Opacus'
    fractional orders), on the round's critical path; a run's closing verification asks it of every release again
    (4,096 histories: every holder-round of a 4-holder run of 1,024 rounds, each a few floats)."""
    return _record_level_epsilon(tuple((float(z), float(q), int(n)) for z, q, n in history), float(delta))


@functools.lru_cache(maxsize=4096)
def _record_level_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    from opacus.accountants import RDPAccountant

    acc = RDPAccountant()
    acc.history = list(history)
    return clamp_epsilon(acc.get_epsilon(delta)) if acc.history else 0.0   # ε ≥ 0, as rdp.eps_from_rdp


UNITS = ("sequence", "document", "group")   # what one record is (dp.md §10.2); an entry without "unit": sequence


def record_unit(rl: dict) -> str:
    """The privacy unit a ``record_level`` entry states (entries written before units existed: sequence)."""
    return rl.get("unit", "sequence")


# the record-level neighbouring relation (dp.md §10): Poisson-sampled DP-SGD's RDP is for adding or removing one
# record, whatever the unit; the one source for summary.json, `securefed verify` and the report's NIST row
RECORD_RELATION = "add/remove"


def signed_record_units(ledgers: dict) -> str | dict[str, str] | None:
    """What one record is in a run, from the last signed ``record_level`` of each holder's own ledger ({holder id:
    path}; a missing or unreadable one is skipped): the unit when every holder that signed one names the same, else
    {holder id (str): unit}; None when none signed one (a deployment's coordinator reads no holder's ledger: its own
    config.yaml does not decide what the holders ran, so it states no unit; PV-55)."""
    from securefed.privacy.ledger import LedgerError, read_ledger

    units: dict[str, str] = {}
    for h, path in sorted(ledgers.items()):
        try:
            signed = [e["record_level"] for e in read_ledger(path) if isinstance(e.get("record_level"), dict)]
        except (LedgerError, OSError):
            continue
        if signed:
            units[str(h)] = record_unit(signed[-1])
    if not units:
        return None
    return next(iter(units.values())) if len(set(units.values())) == 1 else units


def record_level_entry(history: Sequence[Sequence[float]], delta: float, *, unit: str = "sequence",
                       padded_rows: int | None = None, unit_field: str | None = None,
                       sample_rate: float | None = None) -> dict:
    """What a holder's ``released`` entry records of its record-level DP-SGD spend so far: the accountant's
    (σ, q, steps) history, its total steps, δ, the privacy unit and the ε they give — signed with the release,
    so a restart can be checked against it and a verifier can recompute it. ``padded_rows``
    (train.dp_sgd.hide_batch_size, dp.md §10.4): the rows every step in ``history`` padded its batch to (a restored
    checkpoint's steps included: HolderTrainer.dp_padded_rows is None when any of them did not).
    ``unit_field`` (unit=group): the name of the data field whose values are the groups (e.g. "patient_id"; a
    field name from the holder's config, never a value), so a verifier sees what one record is. ``sample_rate``
    (train.dp_sgd.sample_rate, dp.md §10.3): the public q every step in ``history`` ran at (HolderTrainer.
    dp_public_rate; None when q = B/N), so a reader knows the signed ε does not give the record count away."""
    if unit not in UNITS:
        raise ValueError(f"unit must be one of {UNITS}, got {unit!r}")
    hist = [[float(z), float(q), int(n)] for z, q, n in history]
    out = {"history": hist, "steps": sum(n for _, _, n in hist), "delta": float(delta),
           "epsilon": record_level_epsilon(hist, float(delta)), "unit": unit}
    if padded_rows is not None:
        out["padded_rows"] = int(padded_rows)
    if unit == "group" and unit_field is not None:
        out["unit_field"] = str(unit_field)
    if sample_rate is not None:
        out["sample_rate"] = float(sample_rate)
    return out


def public_sample_rate(entries: Sequence[dict]) -> float | None:
    """The public q (dp.md §10.3) when EVERY release with record_level signs the same ``sample_rate`` (which
    record_level_problem has checked against its history); None when any did not: q = B/N there, a function of the
    holder's record count, which its ε sent every round then gave away (PV-56)."""
    rates = {e["record_level"].get("sample_rate") for e in entries if isinstance(e.get("record_level"), dict)}
    return rates.pop() if len(rates) == 1 and None not in rates else None


def hidden_batch_rows(entries: Sequence[dict]) -> int | None:
    """The padded batch (dp.md §10.4) when EVERY release with record_level says its steps ran padded to the same
    rows; None when any did not (a restart without hide_batch_size: those steps' batch sizes showed)."""
    rows = {e["record_level"].get("padded_rows") for e in entries if isinstance(e.get("record_level"), dict)}
    return rows.pop() if len(rows) == 1 and None not in rows else None


def history_extends(old: Sequence[Sequence[float]], new: Sequence[Sequence[float]]) -> bool:
    """Whether the accountant history ``new`` is ``old`` plus more steps: the same (σ, q) entries in order, the last
    one's steps not fewer, then any further entries (an accountant only ever appends or counts up its last entry)."""
    old, new = [list(h) for h in old], [list(h) for h in new]
    if len(new) < len(old):
        return False
    for i, (a, b) in enumerate(zip(old, new)):
        last = i == len(old) - 1
        if a[:2] != b[:2] or (b[2] < a[2] if last else b[2] != a[2]):
            return False
    return True


def record_level_problem(entries: Sequence[dict], *, rel_tol: float = 1e-9) -> str | None:
    """None if every ``record_level`` of a holder's own ledger is well formed, its ε is what its history gives,
    and the steps never go back along the ledger (a restart from an older checkpoint would); else the first
    problem, naming its entry."""
    import math

    last = None
    for e in entries:
        rl = e.get("record_level") if isinstance(e, dict) else None
        if rl is None:
            if last is not None and isinstance(e, dict) and e.get("status") == "released":
                return (f"{_where(e)}: a release without record_level after releases with it: its record-level "
                        "DP-SGD spend is not stated")
            continue
        where = _where(e)
        if e.get("status") != "released" or not isinstance(rl, dict):
            return f"{where}: record_level belongs to a released entry and must be an object"
        hist, steps, delta = rl.get("history"), rl.get("steps"), decode_floats(rl.get("delta"))
        ok = isinstance(hist, list) and all(isinstance(h, list) and len(h) == 3 and all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in h) for h in hist)
        if not ok or any(not (math.isfinite(z) and z >= 0 and 0 < q <= 1 and float(n).is_integer() and n >= 0)
                         for z, q, n in hist):
            return f"{where}: record_level history must be [noise multiplier, sample rate, steps] triples"
        if isinstance(steps, bool) or not isinstance(steps, int) or steps != sum(int(n) for _, _, n in hist):
            return f"{where}: record_level steps {steps!r} is not the history's total"
        if not isinstance(delta, (int, float)) or not 0 < delta < 1:
            return f"{where}: record_level delta must be in (0, 1)"
        if record_unit(rl) not in UNITS:
            return f"{where}: record_level unit {rl.get('unit')!r} is not one of {list(UNITS)}"
        field = rl.get("unit_field")
        if field is not None and (not isinstance(field, str) or not field or record_unit(rl) != "group"):
            return f"{where}: record_level unit_field must be a non-empty field name, and only with unit group"
        # a release before the field was signed (None) may be followed by one naming it; never another field
        if last is not None and record_unit(rl) == "group" and last[5] is not None and field != last[5]:
            return (f"{where}: the record-level groups changed from data.unit_field {last[5]!r} to {field!r} within "
                    "one run: its steps protected each value of another field, so no single per-group ε holds")
        pad = rl.get("padded_rows")
        if pad is not None and (isinstance(pad, bool) or not isinstance(pad, int) or pad < 1):
            return f"{where}: record_level padded_rows {pad!r} must be a positive integer (dp.md §10.4)"
        rate = rl.get("sample_rate")
        if rate is not None and (isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1
                                 or any(q != rate for _, q, _ in hist)):
            return (f"{where}: record_level sample_rate {rate!r} must be the public q in (0, 1] every step of its "
                    "history ran at (dp.md §10.3)")
        if last is not None and record_unit(rl) != last[4]:
            return (f"{where}: the record-level privacy unit changed from {last[4]} to {record_unit(rl)} within one run: "
                    "its steps were spent on another kind of record, so no single ε holds")
        want, got = record_level_epsilon(hist, delta), decode_floats(rl.get("epsilon"))
        if not isinstance(got, (int, float)) or not math.isclose(want, got, rel_tol=rel_tol, abs_tol=1e-12):
            return f"{where}: record-level epsilon {got!r}, but its history gives {want:.6g}"
        if last is not None and (steps < last[0] or delta != last[1]):
            return (f"{where}: record-level DP-SGD went back from {last[0]} steps to {steps} (or changed delta): "
                    "its spend was lost")
        if last is not None and (not history_extends(last[2], hist) or got < last[3] * (1 - rel_tol)):
            # an audit edited trainer.pt between runs (σ 1 → 50 for the steps already spent): the holder then signed
            # a history that re-priced its past, and the record-level ε fell along the ledger
            return (f"{where}: the record-level history {hist} does not extend the previous release's {last[2]} "
                    "(or its epsilon fell): spent steps were re-priced")
        last = (steps, delta, hist, got, record_unit(rl), field)
    return None
