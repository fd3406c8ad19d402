"""Re-verify a run's privacy records (protocols/dp.md §7.3).

For the server ledger, the server's per-holder view ledgers and the holders' own ledgers:
1. chain and canonical form of every line (``ledger.read_ledger``), and every Ed25519 signature under
   the key ``keys.json`` names (coordinator: server ledger and views; holder h: its own ledger);
2. every event rebuilt from the plan parameters recorded beside it (``events.round_event``): an entry
   cannot describe more noise or less sensitivity than its own plan;
3. every ε recomputed from the recorded events with the pinned accountant scheme and compared with
   the recorded ε;
4. cross-checks: the server's survivors and refusals appear in each holder's view; every round the
   server lists holder h as a survivor has a ``released`` entry in h's own ledger, whose ε is at least
   the server's view of it, and whose settings (the population the holder signed among them) are the
   server entry's;
5. anchors (checkpoint, summary.json, an earlier report): each must be the head of a prefix of the
   server ledger — a rewritten, truncated or re-hashed ledger no longer extends them;
6. the sampling rate's sources (dp.md §2.1): each server entry's population is the roster's size, and
   the cohort memberships the holders' own ledgers witness are plausible at the stated rate
   (``witness.chernoff_log_tail`` at or above ``witness.ALARM``).

The run-directory layout is the caller's business (``securefed.report.privacy_checks``); this module
takes paths, keys and anchors. The first problem found is what the banner names.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from securefed.privacy import rdp as R
from securefed.privacy.accountant import Accountant, RoundEvent, accountant_version, event_rdp, scheme_of
from securefed.privacy.events import plan_from_record, round_event
from securefed.privacy.holder_ledger import (check_holder_entry, hidden_batch_rows, holder_effective_events,
                                             public_sample_rate, record_level_problem, record_unit)
from securefed.privacy import witness as W
from securefed.privacy.ledger import (LedgerError, decode_floats, end_record_own_problems, end_record_problems, entry_hash,
                                      read_ledger)

__all__ = ["Keys", "Anchor", "Problem", "Verification", "verify_records", "check_server_entries", "check_view_entries",
           "epsilon_if_colluding"]

REL_TOL = 1e-9  # same accountant build: recomputation is deterministic up to summation order
REL_TOL_OTHER_LIBS = 1e-6  # same scheme, other opacus/dp-accounting versions


@dataclass(frozen=True)
class Keys:
    """Public keys of a run: ``RUN_DIR/privacy/keys.json`` = {"version": 1, "coordinator": hex, "holders": {id: hex}}."""

    coordinator: bytes
    holders: Mapping[int, bytes] = field(default_factory=dict)

    @classmethod
    def from_json(cls, obj: object) -> "Keys":
        def key(v: object, what: str) -> bytes:
            if not isinstance(v, str) or not re.fullmatch(r"[0-9a-f]{64}", v):
                raise ValueError(f"keys.json: {what} must be 64 lowercase hex digits (an Ed25519 public key)")
            return bytes.fromhex(v)

        if not isinstance(obj, dict) or obj.get("version") != 1 or not isinstance(obj.get("holders", {}), dict):
            raise ValueError("keys.json must be {\"version\": 1, \"coordinator\": hex, \"holders\": {id: hex}}")
        holders = {}
        for h, v in obj.get("holders", {}).items():
            if not str(h).isdigit():
                raise ValueError(f"keys.json: holder id {h!r} is not an integer")
            holders[int(h)] = key(v, f"holder {h}")
        return cls(key(obj.get("coordinator"), "coordinator"), holders)


@dataclass(frozen=True)
class Anchor:
    """A head hash recorded elsewhere (``name``: where); ``entries``: how many entries it pins, if known."""

    name: str
    head: str
    entries: int | None = None


@dataclass(frozen=True)
class Problem:
    ledger: str
    seq: int | None
    round: int | None
    message: str

    def __str__(self) -> str:
        at = "" if self.seq is None else f" entry {self.seq}" + ("" if self.round is None else f" (round {self.round})")
        return f"{self.ledger}{at}: {self.message}"


@dataclass
class Verification:
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    signed: bool = False
    epsilon: float | None = None  # recomputed release ε of the server ledger
    delta: float | None = None
    entries: int = 0
    head: str | None = None
    holder_view_epsilon: dict[int, float] = field(default_factory=dict)  # server's view of each holder (recomputed)
    holder_own_epsilon: dict[int, float] = field(default_factory=dict)  # each holder's own ledger (recomputed, server δ)
    own_ledgers: int = 0
    modes: frozenset = frozenset()  # every privacy mode the server ledger's entries record
    # the server ledger's ε after each entry of a round (recomputed; a re-executed round has two)
    round_epsilon: dict[int, list[float]] = field(default_factory=dict)
    # the holders' witnessed cohort memberships against the stated sampling rate (dp.md §2.1); None if not run
    sampling_check: dict | None = None
    # record-level DP-SGD per holder, from its own last signed release (dp.md §7.2): {"epsilon", "delta", "steps"}
    record_level: dict[int, dict] = field(default_factory=dict)
    # distributed DP: the server ledger's ε if c of the holders in each sum collude with the server (dp.md §11):
    # {c: ε}, c = 1, 2, 3 and every survivor but one, as far as the largest sum had them; {} in other modes; never
    # amplified (the server knows the cohorts): a holder in every sum
    colluding_epsilon: dict[int, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def banner(self) -> str:
        if self.problems:
            more = f" ({len(self.problems) - 1} more problem(s) listed below)" if len(self.problems) > 1 else ""
            first = str(self.problems[0]).rstrip(".")   # a message that ends its sentence: one full stop, not two
            return f"PRIVACY RECORDS DO NOT VERIFY — first bad entry: {first}{more}. No ε can be stated."
        what = f"{self.entries} server entries, {len(self.holder_view_epsilon)} holder views, {self.own_ledgers} holders' own ledgers"
        if not self.signed:
            return (f"UNSIGNED privacy records: {what}; chains, anchors and every ε recomputed agree, but without "
                    "signatures (no privacy/keys.json) anyone with write access could have rewritten them consistently.")
        return f"VERIFIED: {what}; every signature, chain link, anchor and recomputed ε agrees (head {self.head})."


def _num(v: object) -> float:
    v = decode_floats(v)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"not a number: {v!r}")
    try:
        return float(v)
    except OverflowError:      # an int beyond float range (10**400): no recorded quantity is that
        raise ValueError(f"number out of range: {str(v)[:20]}…") from None


# what a malformed record can raise while it is checked: each becomes a Problem naming the entry, never a traceback
_BAD = (KeyError, TypeError, ValueError, ArithmeticError, RecursionError)


def _same(a: float, b: float, tol: float) -> bool:
    if math.isinf(a) or math.isinf(b):
        return a == b
    return math.isclose(a, b, rel_tol=tol, abs_tol=1e-12)


def _events_equal(a: RoundEvent, b: RoundEvent) -> bool:
    da, db = a.to_dict(), b.to_dict()
    for k, va in da.items():
        vb = db[k]
        if isinstance(va, float) or isinstance(vb, float):
            if not _same(float(va), float(vb), 1e-9):
                return False
        elif va != vb:
            return False
    return True


_VERSION = re.compile(r"^securefed-(rdp|prv)/(\d+) ")


def _tolerance(entry: dict, label: str, v: Verification) -> float:
    """Check the pinned accountant scheme; tolerance for the comparison (ValueError if not recomputable)."""
    rec = str(entry.get("accountant_version", ""))
    scheme = scheme_of(rec)                      # ValueError: a scheme this code cannot recompute
    m = _VERSION.match(rec)
    mine = accountant_version(m.group(1), scheme)
    if rec == mine:
        return REL_TOL
    note = f"{label}: accounted with {rec}, recomputed with {mine} (tolerance {REL_TOL_OTHER_LIBS:g})"
    if note not in v.notes:
        v.notes.append(note)
    return REL_TOL_OTHER_LIBS


class _Running:
    """Cumulative ε after each added event, computed as Accountant.epsilon does (same order of summation)
    but incrementally for RDP, so a ledger of R entries costs O(R) curve additions, not O(R²)."""

    def __init__(self, kind: str, scheme: int) -> None:
        self.acc = Accountant(kind, scheme)
        self.total = np.zeros(len(R.ORDERS))
        self.none = False

    def add(self, ev: RoundEvent) -> None:
        self.acc.add(ev)
        self.none = self.none or ev.mechanism == "none"
        if self.acc.kind == "rdp":
            self.total = self.total + event_rdp(ev, self.acc.scheme)

    def epsilon(self, delta: float) -> float:
        if self.acc.kind != "rdp" or not self.acc.events:
            return self.acc.epsilon(delta)
        return math.inf if self.none else R.eps_from_rdp(self.total, delta)[0]


def _expected_event(e: dict, q: float) -> RoundEvent:
    plan, dim, sigma_b = plan_from_record(e.get("plan"))
    return round_event(mode=e["mode"], mechanism=e["mechanism"], sampling=e["sampling"], q=q, z=_num(e["noise_multiplier"]),
                       plan=plan, dim=dim, survivors=int(e["n_survivors"]), sigma_b=sigma_b)


def _read(path: Path, label: str, key: bytes | None, v: Verification) -> list[dict] | None:
    try:
        entries = read_ledger(path, public_key=key)
    except LedgerError as err:
        v.problems.append(Problem(label, None, None, str(err).replace(f"{path}: ", "")))
        return None
    if key is None and any("sig" in e for e in entries):
        v.problems.append(Problem(label, None, None, "entries are signed but no public key is available to check "
                                                     "them (privacy/keys.json missing or without this key)"))
        return None
    return entries


def _verify_server(entries: list[dict], label: str, v: Verification) -> None:
    acc: _Running | None = None
    first = entries[0] if entries else {}
    for e in entries:
        p = lambda msg: Problem(label, e.get("seq"), e.get("round"), msg)  # noqa: E731
        try:
            if e.get("role") != "server":
                raise ValueError(f"role is {e.get('role')!r}, not 'server'")
            for k in ("mode", "mechanism", "sampling", "population", "ring_bits", "accountant", "delta"):
                if e.get(k) != first.get(k):
                    raise ValueError(f"{k} changed from {first.get(k)!r} to {e.get(k)!r}")
            if scheme_of(e.get("accountant_version")) != scheme_of(first.get("accountant_version")):
                # a run keeps the scheme it began with (dp.md §6.5): a later scheme would re-price earlier rounds
                raise ValueError(f"accountant scheme changed from {first.get('accountant_version')!r} to "
                                 f"{e.get('accountant_version')!r}")
            if e.get("n_survivors") != len(e.get("survivors", ())):
                raise ValueError("n_survivors does not match the survivor list")
            if "n_masked" in e:   # ckks+secagg, A \ B: never where the masked shares are the noise (distributed)
                k = e["n_masked"]
                if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < e["n_survivors"] \
                        or e.get("mode") == "distributed":
                    raise ValueError(f"n_masked {k!r} must be fewer than the {e['n_survivors']} survivors, "
                                     "and only outside distributed DP")
            q, m, pop = _num(e["sampling_rate"]), e.get("cohort_size_planned"), e.get("population")
            if isinstance(m, bool) or not isinstance(m, int) or isinstance(pop, bool) or not isinstance(pop, int) \
                    or not 1 <= m <= pop or not math.isclose(q, m / pop, rel_tol=1e-12):
                # the amplification the accountant grants comes from q = planned cohort / population (dp.md §2)
                raise ValueError(f"sampling_rate {q!r} is not cohort_size_planned / population = {m!r} / {pop!r}")
            c = e.get("cohort_size")
            if isinstance(c, bool) or not isinstance(c, int) or c < e["n_survivors"] + len(e.get("refused", ())) \
                    or (e.get("sampling") == "fixed" and c > m):
                # a fixed-size cohort is at most the planned m: an entry with more holders in it than m states a
                # smaller q than its own cohort shows (an audit: m = 1 stated for cohorts of 5, ε 8.25 for 15.21)
                raise ValueError(f"cohort_size {c!r} contradicts the entry: {e['n_survivors']} survivors and "
                                 f"{len(e.get('refused', ()))} refusals, planned {m!r} ({e.get('sampling')} sampling)")
            if e.get("mode") == "central" and (not isinstance(e.get("plan"), dict)
                                               or e["plan"].get("n_planned") != e.get("population")):
                # dp.md §6.4: γ (so the charged bound S) is planned for the population, whoever takes part
                raise ValueError("a central-mode round must be planned for the whole population "
                                 f"({e.get('population')!r}), not {(e.get('plan') or {}).get('n_planned')!r}")
            tol = _tolerance(e, label, v)
            ev = RoundEvent.from_dict(e["event"])
            want = _expected_event(e, q)
            if not _events_equal(ev, want):
                raise ValueError(f"recorded event {ev.to_dict()} is not the event of its own plan {want.to_dict()}")
            acc = acc or _Running(e["accountant"], scheme_of(e["accountant_version"]))
            acc.add(ev)
            eps, recorded = acc.epsilon(_num(e["delta"])), _num(e["epsilon"])
            if not _same(eps, recorded, tol):
                raise ValueError(f"recorded epsilon {recorded:.6g}, but its events give {eps:.6g}")
            v.round_epsilon.setdefault(e["round"], []).append(eps)
        except _BAD as err:
            v.problems.append(p(str(err) if not isinstance(err, KeyError) else f"lacks field {err}"))
            return
    if entries:
        v.epsilon, v.delta = eps, _num(first["delta"])
        if first.get("mode") == "distributed":
            v.colluding_epsilon = epsilon_if_colluding(entries)
    else:
        v.epsilon = 0.0       # nothing was released


def epsilon_if_colluding(entries: Sequence[dict]) -> dict[int, float]:
    """dp.md §11: the release ε of a (verified) distributed-DP server ledger if ``c`` holders of every sum collude
    with the server. They subtract their own noise shares, so a round's event is that of its plan with the
    other survivors' shares only: max(1, m − c) of its m (the target's own share is honest, and a sum without the
    target releases nothing of it; a sum with no survivor stays empty). c = 1, 2, 3 and m_max − 1 (every other
    survivor: the target's own share alone), as far as the largest sum's m_max allows.
    Never amplified by sampling: the coalition includes the server, which knows every cohort (§2), so each round is
    charged at q = 1, the ε of a holder in every sum — an upper bound for each holder (a compliance review: under
    q = 4/6 the amplified figure read 5.066 with one colluder where a holder in all 4 sums is at 5.482)."""
    first = entries[0]
    m_max = max(int(e["n_survivors"]) for e in entries)
    out = {}
    for c in sorted({1, 2, 3, m_max - 1}):
        if not 1 <= c <= m_max - 1:
            continue
        acc = _Running(first["accountant"], scheme_of(first["accountant_version"]))
        for e in entries:   # the entry's own event (as _verify_server checked it) with fewer honest shares
            m = int(e["n_survivors"])
            acc.add(_expected_event(dict(e, n_survivors=max(1, m - c) if m else 0), 1.0))
        out[c] = acc.epsilon(_num(first["delta"]))
    return out


def _verify_view(h: int, entries: list[dict], label: str, v: Verification) -> None:
    acc: _Running | None = None
    for e in entries:
        try:
            if e.get("role") != "holder" or e.get("holder_id") != h:
                raise ValueError(f"is not holder {h}'s view entry")
            if e.get("status") not in ("included", "dropped", "refused"):
                raise ValueError(f"unknown status {e.get('status')!r}")
            tol = _tolerance(e, label, v)
            acc = acc or _Running("rdp", scheme_of(e["accountant_version"]))
            if scheme_of(e["accountant_version"]) != acc.acc.scheme:
                raise ValueError("accountant scheme changed within the ledger")
            ev = RoundEvent.from_dict(e["event"])
            if not _events_equal(ev, _expected_event(e, 1.0)):
                raise ValueError("recorded event is not the (unamplified) event of its own plan")
            if e["status"] == "included":
                acc.add(ev)
            eps, recorded = acc.epsilon(_num(e["delta"])), _num(e["epsilon"])
            if not _same(eps, recorded, tol):
                raise ValueError(f"recorded epsilon {recorded:.6g}, but its events give {eps:.6g}")
        except _BAD as err:
            v.problems.append(Problem(label, e.get("seq"), e.get("round"), str(err) if not isinstance(err, KeyError) else f"lacks field {err}"))
            return
    v.holder_view_epsilon[h] = acc.epsilon(_num(entries[-1]["delta"])) if acc is not None else 0.0


def _verify_own(entries: list[dict], label: str, v: Verification) -> None:
    for i, e in enumerate(entries):
        try:
            check_holder_entry(e)
            if e["holder_id"] != entries[0]["holder_id"] or e["run_id"] != entries[0]["run_id"]:
                raise ValueError("holder_id or run_id differs from the ledger's first entry")
            tol = _tolerance(e, label, v)
            # a holder's own events carry q = 1 (no amplification), whose curve is the same under every scheme: its
            # ledger may span a software upgrade
            eps = Accountant("rdp", scheme_of(e["accountant_version"])).epsilon(
                _num(e["delta"]), holder_effective_events(entries[: i + 1]))
            recorded = _num(e["epsilon"])
            if not _same(eps, recorded, tol):
                raise ValueError(f"recorded epsilon {recorded:.6g}, but its effective events give {eps:.6g}")
        except (LedgerError, *_BAD) as err:
            v.problems.append(Problem(label, e.get("seq") if isinstance(e, dict) else i, e.get("round") if isinstance(e, dict) else None, str(err)))
            return
    seen: dict[tuple[str, int], dict] = {}
    for e in entries:   # H7/H8: one release and at most one settlement per round (a second is a release twice)
        if e["status"] in ("released", "settled"):
            k = (e["status"], e["round"])
            if k in seen:
                v.problems.append(Problem(label, e["seq"], e["round"], f"a second '{e['status']}' entry for round "
                                          f"{e['round']} (first: entry {seen[k]['seq']}): a holder releases and "
                                          "settles each round once"))
                return
            seen[k] = e
    why = record_level_problem(entries)
    if why:
        v.problems.append(Problem(label, None, None, why))
        return
    last = [e["record_level"] for e in entries if isinstance(e.get("record_level"), dict)]
    if last and entries:
        rl = last[-1]
        v.record_level[int(entries[0]["holder_id"])] = {"epsilon": _num(rl["epsilon"]), "delta": _num(rl["delta"]),
                                                         "steps": int(rl["steps"]), "unit": record_unit(rl),
                                                         "padded_rows": hidden_batch_rows(entries),
                                                         "sample_rate": public_sample_rate(entries),
                                                         "unit_field": rl.get("unit_field")}
    v.own_ledgers += 1


def _check_model(end: dict, model_sha256: str | None, v: Verification) -> None:
    """dp.md §7.4: the signed end-of-run record names the model the run exported; the model in the run directory
    must be it (``model_sha256``: its SHA-256, None when the directory holds no model), or the ε stated is another
    run's -- a whole privacy/ of another run of the same coordinator verifies on its own."""
    named = end.get("model_sha256")
    if named is None:
        v.notes.append("privacy/end.json names no model (written before securefed bound it): nothing shows the ε is "
                       "this directory's model's")
    elif model_sha256 is None:
        v.notes.append("no model/model.safetensors here: the model the privacy records are of "
                       f"(SHA-256 {str(named)[:16]}…) was not checked")
    elif named != model_sha256:
        v.problems.append(Problem("privacy/end.json", None, None, f"names the model {str(named)[:16]}…, but "
                                  f"model/model.safetensors is {model_sha256[:16]}…: these privacy records are not "
                                  "this model's"))


def _check_one_run(server: list[dict], views: dict[int, list[dict]], owns: dict[int, tuple[str, list[dict]]],
                   end: dict | None, v: Verification) -> None:
    """Every record names the same run (dp.md §7.3): the same coordinator key signs every run of a federation, so
    a ledger, view, own ledger or end-of-run record of another run would otherwise verify beside this run's (an end
    record of a run that released nothing, put beside a run whose ledger was deleted, would state ε = 0)."""
    seen: list[tuple[str, str]] = []
    for label, es in [("privacy/ledger.jsonl", server),
                      *((f"privacy/holders/holder-{h}.jsonl", es) for h, es in sorted(views.items())),
                      *((label, es) for label, es in owns.values())]:
        seen.extend((label, str(e["run_id"])) for e in es if isinstance(e, dict) and e.get("run_id") is not None)
    if isinstance(end, dict) and end.get("run_id") is not None:
        seen.append(("privacy/end.json", str(end["run_id"])))
    first = next(iter(seen), None)
    other = next(((label, r) for label, r in seen if r != first[1]), None) if first else None
    if other is not None:
        v.problems.append(Problem(other[0], None, None, f"belongs to run {other[1][:16]}…, but {first[0]} to run "
                                  f"{first[1][:16]}…: these records are of two runs"))


def _cross_check(server: list[dict], views: dict[int, list[dict]], owns: dict[int, tuple[str, list[dict]]], v: Verification) -> None:
    delta = v.delta
    # (round, holder) -> how many times the server lists the holder as a survivor / refuser
    surv: dict[tuple[int, int], int] = {}
    refd: dict[tuple[int, int], int] = {}
    n_surv: dict[int, int] = {}
    last_round = server[-1]["round"] if server else None
    for e in server:
        for h in e["survivors"]:
            surv[(e["round"], h)] = surv.get((e["round"], h), 0) + 1
        for h in e["refused"]:
            refd[(e["round"], h)] = refd.get((e["round"], h), 0) + 1
        n_surv[e["round"]] = e.get("n_masked", e["n_survivors"])   # what the holders settle at: the masked sum's count
    for (r, h), k in sorted(surv.items()):
        got = sum(1 for e in views.get(h, []) if e["round"] == r and e["status"] == "included")
        if got < k:
            v.problems.append(Problem(f"privacy/holders/holder-{h}.jsonl", None, r, f"the server ledger lists holder {h} as a "
                                      f"survivor of round {r}, but its view ledger does not charge it (deleted entry?)"))
            return
    for (r, h), k in sorted(refd.items()):
        got = sum(1 for e in views.get(h, []) if e["round"] == r and e["status"] == "refused")
        if got < k:
            v.problems.append(Problem(f"privacy/holders/holder-{h}.jsonl", None, r, f"the server ledger records holder {h} "
                                      f"refusing round {r}, but its view ledger does not"))
            return
    server_rounds = {e["round"] for e in server}
    for h, es in sorted(views.items()):
        extra = sorted({e["round"] for e in es if e["status"] == "included" and e["round"] not in server_rounds})
        if extra and (len(extra) > 1 or extra[0] != (last_round or 0) + 1):
            v.problems.append(Problem(f"privacy/holders/holder-{h}.jsonl", None, extra[0], f"charges holder {h} for round "
                                      f"{extra[0]}, which the server ledger does not record"))
            return
        if extra:
            v.notes.append(f"holder {h} was charged for round {extra[0]} without a server entry (the coordinator "
                           "stopped between its appends: over-counted, never under-counted)")
    by_round: dict[int, list[dict]] = {}
    for e in server:
        by_round.setdefault(e["round"], []).append(e)
    for h, (label, es) in sorted(owns.items()):
        released = {}
        for e in es:
            if e["status"] == "released":
                released[e["round"]] = released.get(e["round"], 0) + 1
                why = _release_disagrees(e, by_round.get(e["round"], []))
                if why:
                    v.problems.append(Problem(label, e["seq"], e["round"], why))
                    return
            if e["status"] == "settled":
                why = _settle_disagrees(e, by_round.get(e["round"], []))
                if why:
                    v.problems.append(Problem(label, e["seq"], e["round"], why))
                    return
            if e["status"] == "settled" and e["survivors"] is not None and (e["round"], h) in surv \
                    and e["survivors"] != n_surv.get(e["round"]):
                v.problems.append(Problem(label, e["seq"], e["round"], f"settles round {e['round']} at {e['survivors']} "
                                          f"survivors; the server ledger records {n_surv.get(e['round'])}"))
                return
        for e in es:   # a settled round: its sum was revealed to the coordinator, so the server must have charged it
            if e["status"] == "settled" and e["round"] not in server_rounds:
                v.problems.append(Problem(label, e["seq"], e["round"], f"the holder settled round {e['round']} (its sum was "
                                          "revealed), but the server ledger has no entry for it: spend missing"))
                return
            if e["status"] == "settled" and (e["round"], h) not in surv:
                # H8: a holder settles at the signed survivor list, just before it sends its unmask shares — the sum it
                # is in can be revealed from then on; a server entry that does not charge it (an aborted round
                # recorded with no survivors, an audit's design gap) under-states the federation's ε
                v.problems.append(Problem(label, e["seq"], e["round"], f"the holder settled round {e['round']} (it was "
                                          "about to reveal its share of the sum), but the server ledger does not charge "
                                          "it as a survivor of that round"))
                return
        for (r, hh), k in sorted(surv.items()):
            if hh == h and released.get(r, 0) < k:
                v.problems.append(Problem(label, None, r, f"the server lists holder {h} as a survivor of round {r}, but "
                                          "the holder's own ledger has no 'released' entry for it"))
                return
        if delta is not None:
            own = Accountant("rdp").epsilon(delta, holder_effective_events(es))
            v.holder_own_epsilon[h] = own
            view = v.holder_view_epsilon.get(h)
            if view is not None and own < view * (1 - 1e-9):
                v.problems.append(Problem(label, es[-1]["seq"] if es else None, None, f"the holder's own epsilon {own:.6g} is "
                                          f"below the server's view of it {view:.6g} (at delta {delta:g})"))
                return


_SAME_SETTINGS = ("delta", "mode", "mechanism", "clip", "ring_bits", "noise_multiplier", "population")
_NOISE_FIELDS = ("noise_multiplier", "share_std", "l1", "l2", "dim")


def _release_disagrees(own: dict, server_entries: list[dict]) -> str | None:
    """A holder's own 'released' entry against the server's entry of that round (dp.md §7.3, 4): the holder
    recorded the settings and the noise of the plan it encoded with; a server entry (signed by a coordinator
    that may lie) claiming another δ, more noise or less sensitivity for that round is caught here. None if
    they agree (or the server has no entry for the round: the holder dropped, checked elsewhere)."""
    if not server_entries:
        return None
    se = server_entries[-1]
    for k in _SAME_SETTINGS:
        if k in own and own[k] != se.get(k):
            if k == "population":   # the holder signs the size of the roster it knows (dp.md §2.1)
                return (f"the holder released round {own['round']} as one of a roster of {own[k]!r} holders; the server "
                        f"ledger states population {se.get(k)!r} (the sampling rate, hence the amplification, "
                        "comes from it)")
            return (f"the holder released round {own['round']} with {k} = {own[k]!r}; the server ledger records "
                    f"{se.get(k)!r}")
    if se.get("plan") is None:
        return None
    want, got = _expected_event(se, 1.0).to_dict(), own.get("event") or {}
    if got.get("mechanism") != want.get("mechanism"):   # e.g. "empty": a release projected onto an empty sum
        return None
    diff = _event_difference(got, want, _NOISE_FIELDS, skip_absent=True)
    if diff:
        k, a, b = diff
        return (f"the holder released round {own['round']} under a plan with {k} = {a!r}; the server ledger's "
                f"plan for that round gives {b!r}")
    return None


def _event_difference(got: dict, want: dict, keys, *, skip_absent: bool = False) -> tuple | None:
    """The first of ``keys`` where two recorded events differ (numbers at relative 10⁻⁹), as (key, got, want)."""
    for k in keys:
        a, b = got.get(k), want.get(k)
        if skip_absent and (a is None or b is None):
            continue
        same = a == b if a is None or b is None or isinstance(a, str) or isinstance(b, str) \
            else _same(_num(a), _num(b), 1e-9)
        if not same:
            return k, a, b
    return None


def _settle_disagrees(own: dict, server_entries: list[dict]) -> str | None:
    """A holder's own 'settled' entry against the server entry of its round: the settled event must be the one the
    server's plan gives at the settled count, unamplified (dp.md §7.3, 4) — a settlement claiming more noise lowers
    the holder's ε as surely as a forged release would."""
    if not server_entries or server_entries[-1].get("plan") is None:
        return None
    se = server_entries[-1]
    n = own.get("survivors") if isinstance(own.get("survivors"), int) else se.get("n_survivors")
    want = _expected_event(dict(se, n_survivors=n), 1.0).to_dict()
    diff = _event_difference(own.get("event") or {}, want, want)
    if diff:
        k, a, b = diff
        return (f"the holder settled round {own['round']} with {k} = {a!r}; the server ledger's plan for that round "
                f"gives {b!r} at {n} survivors")
    return None


def _check_anchors(entries: list[dict], anchors: Sequence[Anchor], v: Verification) -> None:
    heads = [entry_hash(e) for e in entries]
    prefix = {h: i + 1 for i, h in enumerate(heads)}
    prefix["0" * 64] = 0
    for a in anchors:
        n = prefix.get(a.head)
        if n is None or (a.entries is not None and n != a.entries):
            pinned = f"{a.entries} entries, " if a.entries is not None else ""
            v.problems.append(Problem("privacy/ledger.jsonl", len(entries) - 1 if entries else None, entries[-1]["round"] if entries else None,
                                      f"does not extend the {a.name} anchor ({pinned}head {a.head[:16]}…): entries were "
                                      "rewritten, re-hashed or removed"))
            return
        if n < len(entries):
            v.notes.append(f"{len(entries) - n} server entr{'y' if len(entries) - n == 1 else 'ies'} recorded after the {a.name} anchor")


def _check_roster(server: list[dict], roster: Mapping[int, bytes] | None, label: str, keys: Keys | None,
                  v: Verification) -> None:
    """dp.md §2.1: the population the sampling rate divides by is the roster's size, not a free claim."""
    if roster is None:
        pops = sorted({e.get("population") for e in server if isinstance(e.get("population"), int)})
        v.notes.append(f"no roster found (pki/roster.yaml in the run directory, or --roster): the population "
                       f"{', '.join(map(str, pops)) or '(none recorded)'} behind the sampling rate is the coordinator's "
                       "claim, checked only against the holders' own ledgers")
        return
    n, ids = len(roster), set(roster)
    for e in server:
        try:
            if e.get("population") != n:
                raise ValueError(f"states population {e.get('population')!r}, but the roster ({label}) lists {n} holders: "
                                 f"the sampling rate {e.get('cohort_size_planned')!r}/{e.get('population')!r} and the "
                                 "amplification it grants are not the federation's")
            named = {h for k in ("refused", "survivors") for h in e.get(k) or ()}
            if not named <= ids:
                raise ValueError(f"names holders that are not on the roster ({label}): {sorted(named - ids)[:5]}")
        except _BAD as err:
            v.problems.append(Problem("privacy/ledger.jsonl", e.get("seq"), e.get("round"), str(err)))
            return
    if keys is not None and dict(keys.holders) != dict(roster):
        v.problems.append(Problem("privacy/keys.json", None, None, f"its holder keys are not the roster's ({label}): the "
                                  "holders' own ledgers would be checked under keys the federation never issued"))


def _check_sampling(server: list[dict], owns: dict[int, list[dict]], holders: frozenset[int], v: Verification) -> None:
    """dp.md §2.1: the holders' signed own ledgers witness the rounds each was in a cohort; far more memberships
    than the stated sampling rate allows means the population or planned cohort behind it was overstated."""
    if not server or not holders:
        return
    try:
        t, rounds = W.witnessed_memberships(server, owns, holders)
        log_p, floor = W.chernoff_log_tail(t, rounds), W.min_log_bound(rounds)
    except _BAD as err:
        v.problems.append(Problem("privacy records", None, None, f"sampling rate cannot be checked: {err}"))
        return
    mu, trials = W.expected_memberships(rounds), sum(n for n, _ in rounds)
    v.sampling_check = {"holders": len(holders), "rounds": len(rounds), "memberships": t, "expected": mu,
                        "log_bound": log_p, "alarm": W.ALARM, "has_power": floor < math.log(W.ALARM)}
    what = (f"{len(holders)} holders' own ledgers witness {t} cohort memberships in {len(rounds)} rounds; the stated "
            f"sampling rate gives {mu:.3g} expected")
    if log_p < math.log(W.ALARM):
        v.problems.append(Problem("privacy/ledger.jsonl", None, None, f"{what}, and honest sampling gives {t} or more "
                                  f"with probability at most e^{log_p:.1f} < {W.ALARM:g}: the stated population or planned "
                                  "cohort (the sampling rate the ε is amplified by) is implausible"))
    elif floor >= math.log(W.ALARM):
        v.notes.append(f"{what}; with {trials} chances the sampling-rate check has no power (even a membership in "
                       "every one would be plausible at that rate)")
    else:
        v.notes.append(f"{what}: plausible (bound e^{log_p:.1f}, alarm below {W.ALARM:g})")


def check_server_entries(entries: list[dict], label: str = "privacy/ledger.jsonl") -> list[Problem]:
    """Problems of a server ledger's entries (events from their plans, ε recomputed); [] if none."""
    v = Verification()
    _verify_server(entries, label, v)
    return v.problems


def check_view_entries(holder_id: int, entries: list[dict], label: str) -> list[Problem]:
    """Problems of the server's view ledger of one holder; [] if none."""
    v = Verification()
    _verify_view(holder_id, entries, label, v)
    return v.problems


def verify_records(*, server_ledger: Path, view_ledgers: Mapping[int, Path], own_ledgers: Sequence[Path], keys: Keys | None,
                   anchors: Sequence[Anchor] = (), own_expected: frozenset[int] = frozenset(),
                   end: dict | None = None, roster: Mapping[int, bytes] | None = None,
                   roster_label: str = "roster", model_sha256: str | None = None) -> Verification:
    """Verify everything (module doc). Never raises for bad records: they become ``problems``.

    ``roster``: the federation's holders (id → Ed25519 key, ``roster_label`` says where it was found): each server
    entry's population must be its size, every holder it names must be on it, and keys.json's holder keys must be
    its keys (dp.md §2.1). None: the population is the coordinator's claim alone, and a note says so.

    ``own_expected``: holders whose own ledger must be among ``own_ledgers`` (a simulation's holders/<id>/):
    one the server lists as a survivor with no own ledger, or an empty one, is a problem (deleted?); each witnesses
    the sampling rate, with zero memberships if it has no ledger.
    ``end``: the end-of-run record (privacy/end.json, dp.md §7.4); a signed run without one is not verified —
    nothing else tells a finished run from one whose ledgers were cut back to a signed prefix."""
    v = Verification(signed=keys is not None)
    ckey = keys.coordinator if keys else None
    if not Path(server_ledger).is_file():
        v.problems.append(Problem("privacy/ledger.jsonl", None, None, "no server ledger found"))
        return v
    server = _read(Path(server_ledger), "privacy/ledger.jsonl", ckey, v)
    if server is None:
        return v
    v.entries, v.head = len(server), (entry_hash(server[-1]) if server else None)
    v.modes = frozenset(e.get("mode") for e in server if isinstance(e, dict) and isinstance(e.get("mode"), str))
    _verify_server(server, "privacy/ledger.jsonl", v)
    _check_anchors(server, anchors, v)
    if not v.problems:
        _check_roster(server, roster, roster_label, keys, v)
    views: dict[int, list[dict]] = {}
    for h, path in sorted(view_ledgers.items()):
        label = f"privacy/holders/holder-{h}.jsonl"
        es = _read(Path(path), label, ckey, v)
        if es is not None:
            _verify_view(h, es, label, v)
            views[h] = es
    if not v.problems:
        if end is None:
            if v.signed:
                v.problems.append(Problem("privacy/end.json", None, None, "missing: no signed end-of-run record, so "
                                          "this run is unfinished or its ledgers were cut back to a signed prefix; "
                                          "the ε of the recorded rounds is not the run's"))
            else:
                v.notes.append("no privacy/end.json: nothing shows the ledgers were not cut back")
        else:
            try:
                bad = end_record_problems(end, public_key=ckey, server=server, views=views)
            except _BAD as err:
                bad = [f"is malformed ({type(err).__name__}: {err})"]
            if bad:
                v.problems.append(Problem("privacy/end.json", None, None, bad[0]))
            else:
                _check_model(end, model_sha256, v)
    owns: dict[int, tuple[str, list[dict]]] = {}
    for path in own_ledgers:
        path = Path(path)
        label = str(path)
        try:
            plain = read_ledger(path)
            hid = plain[0]["holder_id"] if plain else None
        except (LedgerError, *_BAD) as err:
            v.problems.append(Problem(label, None, None, str(err).replace(f"{path}: ", "")))
            continue
        if hid is None:
            continue
        hkey = None
        if keys is not None:
            hkey = keys.holders.get(hid) if isinstance(hid, int) else None
            if hkey is None:
                v.problems.append(Problem(label, None, None, f"keys.json has no public key for holder {hid!r}"))
                continue
        es = _read(path, label, hkey, v)
        if es is not None:
            if int(hid) in owns:     # a copy of one holder's ledger filed as another's would count it twice
                first, fes = owns[int(hid)]
                filed = {Path(x).parent.name for x in (label, first) if Path(x).parent.parent.name == "holders"}
                if es == fes and filed <= {str(hid)}:   # the same ledger given twice (a holder checking the run
                    v.notes.append(f"{label} is the same ledger as {first}: counted once")   # against its own copy)
                    continue
                v.problems.append(Problem(label, None, None, f"a second own ledger of holder {hid} that differs from "
                                          f"the first ({first})"))
                continue
            _verify_own(es, label, v)
            owns[int(hid)] = (label, es)
    if not v.problems:
        _check_one_run(server, views, owns, end, v)
    if not v.problems and isinstance(end, dict):   # verified above: the holders' own ledgers it closes (§7.4)
        try:
            bad = end_record_own_problems(end, {h: es for h, (_, es) in owns.items()})
        except _BAD as err:
            bad = [f"is malformed ({type(err).__name__}: {err})"]
        if bad:
            v.problems.append(Problem("privacy/end.json", None, None, bad[0]))
    if not v.problems:
        for e in server:
            gone = sorted(h for h in e.get("survivors", ()) if isinstance(h, int) and h in own_expected and h not in owns)
            if gone:
                v.problems.append(Problem(f"holders/{gone[0]}/ledger.jsonl", None, e.get("round"), f"missing or empty, but "
                                          f"the server lists holder {gone[0]} as a survivor of round {e.get('round')}"))
                break
    if not v.problems:
        try:
            _cross_check(server, views, owns, v)
        except _BAD as err:     # odd types the per-ledger checks let through (e.g. a survivor list of lists)
            v.problems.append(Problem("privacy records", None, None, f"cannot be cross-checked: {type(err).__name__}: {err}"))
    if not v.problems:
        wit = frozenset(owns) | own_expected
        if roster is not None:   # only roster members can witness (dp.md §2.1), and never more than the population
            wit = frozenset(h for h in wit if h in roster)
        pop = server[-1].get("population") if server else None
        if isinstance(pop, int) and not isinstance(pop, bool) and len(wit) > pop:
            v.problems.append(Problem("holders/", None, None, f"{len(wit)} holders witness the sampling rate, more than "
                                      f"the population of {pop}: state directories or ledgers were added"))
            return v
        _check_sampling(server, {h: es for h, (_, es) in owns.items()}, wit, v)
    if not v.signed:
        v.notes.append("no privacy/keys.json: signatures were not checked")
    return v
