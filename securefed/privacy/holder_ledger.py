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

from typing import Iterable, Sequence

from securefed.privacy.accountant import Accountant, RoundEvent
from securefed.privacy.ledger import LedgerError, decode_floats

__all__ = ["HOLDER_STATUSES", "REQUIRED_FIELDS", "check_holder_entry", "holder_effective_events", "holder_epsilon"]

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
