"""`securefed verify` and `securefed report` catch every kind of ledger tampering (protocols/dp.md §7.3).

Each case tampers with a signed run directory the way an operator with write access could, then runs
both commands through the CLI: both must exit non-zero, name the bad entry, and the report must state
no ε. The untampered run verifies (exit 0) and the report states its ε.
"""

import json

import numpy as np
import pytest

from securefed.cli import main
from securefed.privacy.accountant import epsilon_text
from securefed.privacy.holder_ledger import holder_effective_events
from securefed.privacy.ledger import GENESIS, canonical_json, entry_hash
from tests.report.signed_run import make_signed_run


@pytest.fixture
def signed_run(tmp_path):
    rd = tmp_path / "run"
    make_signed_run(rd, drop_last_holder_at=3)
    return rd


def _lines(p):
    return p.read_text().splitlines(keepends=True)


def _rewrite(p, edit, *, rehash_from=None):
    """Apply ``edit`` to the parsed entries; re-link the chain from ``rehash_from`` on (the signatures stay stale)."""
    es = [json.loads(line) for line in _lines(p)]
    edit(es)
    if rehash_from is not None:
        prev = entry_hash(es[rehash_from - 1]) if rehash_from else GENESIS
        for i in range(rehash_from, len(es)):
            es[i]["seq"], es[i]["prev_hash"] = i, prev
            prev = entry_hash(es[i])
    p.write_text("".join(canonical_json(e) + "\n" for e in es))


def _quarter_eps(es, lo=0):
    for e in es[lo:]:
        e["epsilon"] = e["epsilon"] / 4


def _run_both(rd, capsys):
    code_v = main(["verify", str(rd)])
    out_v = capsys.readouterr()
    code_r = main(["report", str(rd)])
    out_r = capsys.readouterr()
    return code_v, out_v.out + out_v.err, code_r, out_r.out + out_r.err


def test_untampered_signed_run_verifies_and_the_report_states_epsilon(signed_run, capsys):
    code_v, out_v, code_r, out_r = _run_both(signed_run, capsys)
    assert code_v == 0 and "VERIFIED" in out_v and "epsilon=" in out_v, out_v
    assert code_r == 0 and "ledgers verified" in out_r, out_r
    rep = json.loads((signed_run / "report" / "report.json").read_text())
    assert rep["verification"]["ok"] and rep["verification"]["signed"]
    assert float(rep["facts"]["epsilon"]) == pytest.approx(rep["verification"]["epsilon"])
    # every holder's own ε (released-then-settled) is at least the server's view of it
    own, view = rep["verification"]["holder_own_epsilon"], rep["verification"]["holder_view_epsilon"]
    assert set(own) == {"1", "2", "3", "4"} and all(own[h] >= view[h] for h in own)
    assert own["4"] > view["4"]  # holder 4 dropped in round 3: charged (released) by itself, not by the server
    # and the report anchors the head, which a second report checks against
    assert main(["report", str(signed_run)]) == 0


CASES = {
    # the cases: each was reported as verified (or partly) before
    "edited last line": lambda rd: _rewrite(rd / "privacy" / "ledger.jsonl", lambda es: es[-1].update(epsilon=3.0)),
    "edited middle line": lambda rd: _rewrite(rd / "privacy" / "ledger.jsonl", lambda es: es[1].update(epsilon=0.5)),
    "whole chain re-hashed with eps/4": lambda rd: _rewrite(rd / "privacy" / "ledger.jsonl", _quarter_eps, rehash_from=0),
    "server's view of a holder edited": lambda rd: _rewrite(rd / "privacy" / "holders" / "holder-2.jsonl",
                                                            _quarter_eps, rehash_from=0),
    "holder's own ledger edited": lambda rd: _rewrite(rd / "holders" / "3" / "ledger.jsonl", _quarter_eps, rehash_from=0),
    "last server entry deleted": lambda rd: _rewrite(rd / "privacy" / "ledger.jsonl", lambda es: es.pop()),
    "middle server entry deleted": lambda rd: _rewrite(rd / "privacy" / "ledger.jsonl", lambda es: es.pop(1)),
    "holder view entry deleted": lambda rd: _rewrite(rd / "privacy" / "holders" / "holder-1.jsonl", lambda es: es.pop()),
    "holder's release deleted": lambda rd: _rewrite(rd / "holders" / "2" / "ledger.jsonl", lambda es: es.pop(0),
                                                     rehash_from=0),
    "keys.json replaced": lambda rd: (rd / "privacy" / "keys.json").write_text(json.dumps(
        {"version": 1, "coordinator": "11" * 32, "holders": {}})),
    "keys.json deleted": lambda rd: (rd / "privacy" / "keys.json").unlink(),
    # an audit's cases (stop 33): passed as verified, or crashed with a traceback instead of a banner
    "simulated holder's own ledger deleted": lambda rd: _simulated(rd, 2, lambda p: p.unlink()),
    "simulated holder's own ledger emptied": lambda rd: _simulated(rd, 2, lambda p: p.write_text("")),
    "non-ASCII byte before the server ledger": lambda rd: _prepend(rd / "privacy" / "ledger.jsonl", b"\xff"),
    "CRLF line endings": lambda rd: (rd / "privacy" / "ledger.jsonl").write_bytes(
        (rd / "privacy" / "ledger.jsonl").read_bytes().replace(b"\n", b"\r\n")),
    "a 100,000-deep nested JSON line": lambda rd: _prepend(rd / "privacy" / "ledger.jsonl", b"[" * 100_000 + b"\n"),
    # the audit's keyless truncation: every ledger cut back to round 1 (valid signed prefixes), the checkpoint
    # deleted and the JSON anchors rewritten to the prefix's head; only the signed end record is left to say so
    "ledgers cut to a signed prefix, anchors rewritten": lambda rd: _cut_to_first_round(rd),
    "server ledger cut, views left": lambda rd: _rewrite(rd / "privacy" / "ledger.jsonl", lambda es: es.pop()) or
        _reanchor(rd),
    "end record deleted": lambda rd: (rd / "privacy" / "end.json").unlink(),
    "end record edited": lambda rd: _edit_end(rd, ledger_entries=1),
    "one holder's own ledger filed twice": lambda rd: (rd / "holders" / "9").mkdir() or
        (rd / "holders" / "9" / "ledger.jsonl").write_bytes((rd / "holders" / "1" / "ledger.jsonl").read_bytes()),
    # files that state ε beside the ledgers must state the ledgers' ε
    "summary.json's epsilon edited": lambda rd: _edit_json(rd / "summary.json", epsilon=0.5),
    "metrics.jsonl's epsilon edited": lambda rd: (rd / "metrics.jsonl").write_text("".join(
        json.dumps(dict(json.loads(x), epsilon=0.5)) + "\n" for x in _lines(rd / "metrics.jsonl"))),
}


def _edit_json(p, **fields):
    p.write_text(json.dumps(dict(json.loads(p.read_text()), **fields)))


def _edit_end(rd, **fields):
    p = rd / "privacy" / "end.json"
    p.write_text(canonical_json(dict(json.loads(p.read_text()), **fields)) + "\n")


def _reanchor(rd):
    """What a keyless attacker rewrites after cutting: the checkpoint goes, the JSON anchors name the new head."""
    (rd / "checkpoints" / "latest.pt").unlink()
    es = [json.loads(x) for x in _lines(rd / "privacy" / "ledger.jsonl")]
    for name in ("summary.json", "report/report.json"):
        p = rd / name
        if p.is_file():
            d = json.loads(p.read_text())
            d["ledger_head"], d["ledger_entries"] = entry_hash(es[-1]), len(es)
            p.write_text(json.dumps(d))


def _cut_to_first_round(rd):
    for p in [rd / "privacy" / "ledger.jsonl", *(rd / "privacy" / "holders").glob("holder-*.jsonl"),
              *(rd / "holders").glob("*/ledger.jsonl")]:
        keep = [x for x in _lines(p) if json.loads(x)["round"] == 1]
        p.write_text("".join(keep))
    _reanchor(rd)


def _simulated(rd, h, act):
    """A simulation keeps each holder's state under holders/<id>/ (holder.yaml): its own ledger must be there."""
    (rd / "holders" / str(h) / "holder.yaml").write_text(f"id: {h}\n")
    act(rd / "holders" / str(h) / "ledger.jsonl")


def _prepend(p, data):
    p.write_bytes(data + p.read_bytes())


@pytest.mark.parametrize("case", sorted(CASES))
def test_tampering_is_detected_by_verify_and_report(signed_run, capsys, case):
    CASES[case](signed_run)
    code_v, out_v, code_r, out_r = _run_both(signed_run, capsys)
    assert code_v == 1, (case, out_v)
    assert code_r == 1, (case, out_r)
    assert "DO NOT VERIFY" in out_v and "NOT VERIFIED" in out_r
    assert "entry" in out_v or "keys.json" in out_v  # the banner names the first bad entry
    rep = json.loads((signed_run / "report" / "report.json").read_text())
    assert rep["ledger_ok"] is False and rep["facts"]["epsilon"] == "unknown" and rep["verification"]["epsilon"] is None
    md = (signed_run / "report" / "report.md").read_text()
    assert "No ε is stated" in md and "NOT VERIFIED" in md


def test_unsigned_rehashed_chain_is_caught_by_recomputing_epsilon(tmp_path, capsys):
    rd = tmp_path / "run"
    make_signed_run(rd, signed=False)
    assert main(["verify", str(rd)]) == 3  # consistent, but unsigned: not "verified"
    assert "UNSIGNED" in capsys.readouterr().out
    assert main(["report", str(rd)]) == 0 and "unsigned" in capsys.readouterr().err.lower()
    (rd / "summary.json").unlink()  # remove the anchors an attacker would also have to forge
    (rd / "checkpoints" / "latest.pt").unlink()
    (rd / "report" / "report.json").unlink()
    _rewrite(rd / "privacy" / "ledger.jsonl", _quarter_eps, rehash_from=0)
    assert main(["verify", str(rd)]) == 1
    err = capsys.readouterr().err
    assert "entry 0 (round 1)" in err and "its events give" in err
    assert main(["report", str(rd)]) == 1


def test_forged_event_consistent_epsilon_is_caught_by_the_plan_check(tmp_path, capsys):
    # an unsigned ledger whose events claim twice the noise, with ε recomputed to match: the event no
    # longer follows from the plan recorded beside it
    rd = tmp_path / "run"
    make_signed_run(rd, signed=False, rounds=2)
    for rel in ("summary.json", "checkpoints/latest.pt"):
        (rd / rel).unlink()
    from securefed.privacy.accountant import Accountant, RoundEvent

    def forge(es):
        acc = Accountant()
        for e in es:
            e["event"]["share_std"] *= 2
            acc.add(RoundEvent.from_dict(e["event"]))
            e["epsilon"] = acc.epsilon(e["delta"])

    _rewrite(rd / "privacy" / "ledger.jsonl", forge, rehash_from=0)
    assert main(["verify", str(rd)]) == 1
    assert "is not the event of its own plan" in capsys.readouterr().err


def test_pinned_coordinator_key_and_bad_arguments(signed_run, capsys):
    key = json.loads((signed_run / "privacy" / "keys.json").read_text())["coordinator"]
    assert main(["verify", str(signed_run), "--coordinator-key", key]) == 0
    assert main(["verify", str(signed_run), "--coordinator-key", "22" * 32]) == 1
    assert "not the pinned one" in capsys.readouterr().err
    assert main(["verify", str(signed_run), "--coordinator-key", "zz"]) == 2
    assert main(["verify", str(signed_run / "nope")]) == 2
    assert main(["verify", str(signed_run), "--holder-ledger", str(signed_run / "missing.jsonl")]) == 2


def test_holder_ledger_kept_elsewhere_is_cross_checked(signed_run, tmp_path, capsys):
    # deployment: holder 2 keeps its ledger in its own state directory and hands it to the verifier
    elsewhere = tmp_path / "holder2-state" / "ledger.jsonl"
    elsewhere.parent.mkdir()
    (signed_run / "holders" / "2" / "ledger.jsonl").rename(elsewhere)
    assert main(["verify", str(signed_run), "--holder-ledger", str(elsewhere)]) == 0
    capsys.readouterr()
    _rewrite(elsewhere, lambda es: [e.update(status="refused") for e in es if e["round"] == 2], rehash_from=0)
    assert main(["verify", str(signed_run), "--holder-ledger", str(elsewhere)]) == 1


def test_holder_effective_events_rule():
    def ent(r, status, mech="gaussian", z=1.0):
        return {"seq": 0, "round": r, "status": status,
                "event": {"mechanism": mech, "sampling": "none", "q": 1.0, "noise_multiplier": z, "l1": 0.0, "l2": 0.0,
                          "share_std": 0.0, "n_shares": 0, "dim": 0, "variance": 0.0}}

    evs = holder_effective_events([ent(1, "released", z=1.0), ent(1, "settled", z=2.0), ent(2, "refused"),
                                   ent(3, "released", z=1.5), ent(4, "released", z=1.0), ent(4, "settled", z=3.0),
                                   ent(4, "released", z=1.1)])  # round 4 re-run after a resume: a new release
    assert [e.noise_multiplier for e in evs] == [2.0, 1.5, 3.0, 1.1]
    from securefed.privacy.ledger import LedgerError

    with pytest.raises(LedgerError, match="no unsettled release"):
        holder_effective_events([ent(1, "settled")])
    with pytest.raises(LedgerError, match="no unsettled release"):
        holder_effective_events([ent(1, "released"), ent(1, "settled"), ent(1, "settled")])
    with pytest.raises(LedgerError, match="unknown status"):
        holder_effective_events([ent(1, "included")])


def test_a_coordinator_resigning_a_smaller_sampling_rate_is_caught(tmp_path, capsys):
    """An audit re-signed the server ledger with the coordinator's own key after cutting sampling_rate (and the
    events' q) to 0.01 for a 4-of-6 cohort: ε 8.00 became 0.83 and verified. The accountant's amplification comes
    from q = cohort_size_planned / population, both recorded in the same entry: now they must agree."""
    rd = tmp_path / "run"
    _, coord, _ = make_signed_run(rd)
    _resign_server(rd, coord, lambda e: e.update(sampling_rate=0.01))   # what a coordinator holding its key can write
    assert main(["verify", str(rd)]) == 1
    out = capsys.readouterr()
    assert "sampling_rate 0.01 is not cohort_size_planned / population = 4 / 6" in out.out + out.err


def test_a_holders_own_release_pins_the_settings_and_noise_of_its_round(signed_run):
    """An audit re-signed the server ledger with the coordinator's key: δ 10⁻⁵ → 10⁻³ (ε 8.00 → 6.18), or the
    plan's noise ×4 with events rebuilt (ε → 1.65), and both verified. Each holder's own 'released' entry records
    the settings and the noise of the plan it encoded with, signed by the holder: verify holds the server's entry
    of that round to them."""
    import copy

    from securefed.privacy.verify import _release_disagrees

    server = [json.loads(x) for x in _lines(signed_run / "privacy" / "ledger.jsonl")]
    own = [json.loads(x) for x in _lines(signed_run / "holders" / "1" / "ledger.jsonl")]
    rel = next(e for e in own if e["status"] == "released" and e["round"] == 1)
    se = next(e for e in server if e["round"] == 1)
    assert _release_disagrees(rel, [se]) is None
    lie = dict(se, delta=se["delta"] * 100)
    assert "delta" in _release_disagrees(rel, [lie])
    lie = copy.deepcopy(se)
    lie["plan"]["data_noise_multiplier"] *= 4
    assert "share_std" in _release_disagrees(rel, [lie])


def test_a_duplicate_key_is_refused_not_read_either_way(signed_run, capsys):
    """{"epsilon": 7.99, ..., "epsilon": 0.5}: which one a reader sees depends on the reader. verify: not verified
    (1); report: the file is corrupt, nothing written (2); both name the file."""
    p = signed_run / "summary.json"
    p.write_text(p.read_text()[:-1] + ', "epsilon": 0.5}')
    code_v, out_v, code_r, out_r = _run_both(signed_run, capsys)
    assert code_v == 1 and "summary.json" in out_v and "duplicate key 'epsilon'" in out_v
    assert code_r == 2 and "summary.json" in out_r and "duplicate key 'epsilon'" in out_r


@pytest.mark.parametrize("text, said", [
    ("[" * 100000, "nested too deeply"),
    (None, "duplicate key 'coordinator'"),
])
def test_a_keys_json_too_deep_or_with_a_duplicate_key_is_one_clear_problem(signed_run, capsys, text, said):
    """A review (stop 49): privacy/keys.json of "[" × 100,000 ended verify and report in a RecursionError traceback
    (load_keys caught ValueError only), and one with a second "coordinator" key was read (the last one wins), though
    dp.md §7.3 (7) refuses a duplicate key wherever securefed reads JSON. Both are now one problem naming keys.json."""
    p = signed_run / "privacy" / "keys.json"
    if text is None:    # the first key is the real one: a reader taking the last would check another
        d = json.loads(p.read_text())
        text = p.read_text()[:-1] + f', "coordinator": "{"ab" * 32}"}}'
        assert d["coordinator"] != "ab" * 32
    p.write_text(text)
    code_v, out_v, code_r, out_r = _run_both(signed_run, capsys)
    assert code_v == 1 and code_r == 1, (out_v, out_r)
    for out in (out_v, out_r):
        assert "Traceback" not in out and "privacy/keys.json" in out and said in out, out


@pytest.mark.parametrize("field, value, said", [
    ("privacy_mode", "central", "states privacy_mode 'central'; the server ledger records 'distributed'"),
    ("record_epsilon_reported_max", 0.01, "states record_epsilon_reported_max 0.01; holder"),
    ("record_delta", 1e-9, "states record_delta 1e-09; holder"),
])
def test_summary_privacy_statements_below_the_signed_records_do_not_verify(tmp_path, capsys, field, value, said):
    """A review (stop 49) edited summary.json's privacy mode, its record-level ε and its record-level δ: verify and
    report exited 0, and the report's header read the edited mode. Each is now checked against the verified records:
    the mode against the server ledger's, the record-level ε and δ never below a holder's own signed release."""
    rd = tmp_path / "run"
    make_signed_run(rd, dp_sgd_steps=4)
    p = rd / "summary.json"
    honest = dict(json.loads(p.read_text()), privacy_mode="distributed", record_epsilon_reported_max=50.0,
                  record_delta=1e-5)
    p.write_text(json.dumps(honest))
    assert main(["verify", str(rd)]) == 0, capsys.readouterr()
    p.write_text(json.dumps(dict(honest, **{field: value})))
    code_v, out_v, code_r, out_r = _run_both(rd, capsys)
    assert code_v == 1 and code_r == 1 and said in out_v and said in out_r, (out_v, out_r)


def _coordinator_rewrites(rd, coord, keep):
    """What a coordinator holding its own key can write: its ledger and its views of the holders, each entry filtered
    (and edited) by ``keep(path, entry)``; every ε recomputed from the kept events, re-chained, re-signed, the run
    re-closed and the unsigned anchors rewritten (the checkpoint goes)."""
    from securefed.privacy.accountant import Accountant, RoundEvent
    from securefed.privacy.ledger import signed_message, write_end_record
    from tests.report.signed_run import RUN_ID

    for p in [rd / "privacy" / "ledger.jsonl", *(rd / "privacy" / "holders").glob("holder-*.jsonl")]:
        es = [e for e in (json.loads(x) for x in _lines(p)) if keep(p, e)]
        prev, acc = GENESIS, None
        for i, e in enumerate(es):
            acc = acc or Accountant(e["accountant"])
            if e.get("status", "included") == "included":
                acc.add(RoundEvent.from_dict(e["event"]))
            e["epsilon"] = acc.epsilon(e["delta"])
            e.pop("sig")
            e["seq"], e["prev_hash"] = i, prev
            e["sig"] = coord.sign(signed_message(e)).hex()
            prev = entry_hash(e)
        p.write_text("".join(canonical_json(e) + "\n" for e in es))
    write_end_record(rd / "privacy", run_id=RUN_ID, signer=coord)
    _reanchor(rd)


def test_a_round_the_holders_settled_but_the_server_never_charged_is_caught(tmp_path, capsys):
    """An audit's crash (coordinator killed after the unmask, before its WAL): the resumed run's server ledger had no
    entry for the round while every holder's own ledger had it settled — the sum was revealed — and verify passed.
    Here a coordinator holding its key drops round 2 from its ledger and views, re-signed and re-closed."""
    rd = tmp_path / "run"
    _, coord, _ = make_signed_run(rd)
    _coordinator_rewrites(rd, coord, lambda p, e: e["round"] != 2)
    assert main(["verify", str(rd)]) == 1
    out = capsys.readouterr()
    assert "settled round 2 (its sum was revealed), but the server ledger has no entry for it" in out.out + out.err


def test_a_holder_settled_in_a_round_whose_server_entry_does_not_charge_it_is_caught(tmp_path, capsys):
    """H8 (dp.md §7.3): a holder settles at the signed survivor list, just before it sends its unmask shares, so the
    sum it is in can be revealed from then on. A coordinator holding its key keeps round 2 in its ledger but takes
    holder 1 out of that round's survivors and out of its view of holder 1 — every server-side chain and ε is
    consistent, and holder 1's charge for round 2 is gone from the federation's ε. Holder 1's own ledger, signed with
    its key, still settles round 2: verify refuses."""
    from securefed.privacy.verify import _expected_event

    rd = tmp_path / "run"
    _, coord, _ = make_signed_run(rd)

    def drop_holder_1_from_round_2(p, e):
        if e["round"] != 2:
            return True
        if p.name == "ledger.jsonl":
            e["survivors"] = [h for h in e["survivors"] if h != 1]
            e["n_survivors"] = len(e["survivors"])
            e["event"] = _expected_event(e, e["sampling_rate"]).to_dict()    # the event of 3 survivors' shares
            return True
        return p.name != "holder-1.jsonl"
    _coordinator_rewrites(rd, coord, drop_holder_1_from_round_2)
    from securefed.report.privacy_checks import verify_run

    v = verify_run(rd)
    assert len(v.problems) == 1, v.problems
    (pr,) = v.problems
    assert pr.round == 2 and "holders/1/ledger.jsonl" in pr.ledger
    assert "settled round 2 (it was about to reveal its share of the sum), but the server ledger does not charge it " \
           "as a survivor of that round" in pr.message
    assert main(["verify", str(rd)]) == 1
    capsys.readouterr()


def test_private_signing_keys_inside_the_run_directory_are_named_in_a_note(signed_run, capsys):
    """dp.md §7.3: `securefed simulate` keeps every party's private key in RUN_DIR/pki/ until its run is complete (a
    run stopped early, or one written before SYS-34, still holds them), so whoever has the directory can re-sign it.
    Both commands say so; without pki/ they do not."""
    code_v, out_v, code_r, out_r = _run_both(signed_run, capsys)
    assert code_v == 0 and "private signing key" not in out_v
    for rel in ("pki/server/identity.key", "pki/holders/1/identity.key"):
        p = signed_run / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"-----BEGIN PRIVATE KEY-----\n")
    code_v, out_v, code_r, out_r = _run_both(signed_run, capsys)
    assert code_v == 0 and "holds 2 private signing keys (pki/" in out_v and "--coordinator-key" in out_v
    rep = json.loads((signed_run / "report" / "report.json").read_text())
    assert any("private signing keys" in n for n in rep["verification"]["notes"])


def _resign_server(rd, coord, edit):
    """What a coordinator holding its own key can write: ``edit`` each server entry, rebuild every event at the entry's
    sampling_rate and every ε from the events, re-sign and re-chain, re-close the run and rewrite the unsigned anchors."""
    from securefed.privacy.accountant import Accountant, RoundEvent
    from securefed.privacy.ledger import signed_message, write_end_record
    from tests.report.signed_run import RUN_ID

    p = rd / "privacy" / "ledger.jsonl"
    es = [json.loads(x) for x in _lines(p)]
    prev, acc = GENESIS, None
    for e in es:
        edit(e)
        e["event"]["q"] = e["sampling_rate"]
        acc = acc or Accountant(e["accountant"])
        acc.add(RoundEvent.from_dict(e["event"]))
        e["epsilon"] = acc.epsilon(e["delta"])
        e.pop("sig")
        e["prev_hash"] = prev
        e["sig"] = coord.sign(signed_message(e)).hex()
        prev = entry_hash(e)
    p.write_text("".join(canonical_json(e) + "\n" for e in es))
    write_end_record(rd / "privacy", run_id=RUN_ID, signer=coord)
    _reanchor(rd)
    _edit_json(rd / "summary.json", epsilon=es[-1]["epsilon"])
    (rd / "metrics.jsonl").unlink()
    return es


def test_a_coordinator_resigning_an_inflated_population_is_caught_by_the_holders_witness(tmp_path, capsys):
    """The flaw (dp.md §2.1): population and planned cohort are the coordinator's claims, and q = m/N amplifies the
    release ε. A coordinator re-signs its ledger claiming 600 holders instead of 6 (q 4/600, not 4/6; every event and
    ε rebuilt to match, so every per-entry check holds): ε 17.2 becomes 2.66. No roster in the run directory, and these
    holders' ledgers do not state the population — but they witness that each of the 4 was in every one of the 4
    cohorts, which honest sampling at q = 1/150 gives with probability (1/150)^16 ≈ e^-80."""
    rd = tmp_path / "run"
    _, coord, _ = make_signed_run(rd)
    honest = [json.loads(x)["epsilon"] for x in _lines(rd / "privacy" / "ledger.jsonl")][-1]
    es = _resign_server(rd, coord, lambda e: e.update(population=600, sampling_rate=4 / 600))
    assert es[-1]["epsilon"] < honest / 6
    from securefed.report.privacy_checks import verify_run

    v = verify_run(rd)
    (p,) = v.problems
    assert "4 holders' own ledgers witness 16 cohort memberships in 4 rounds" in p.message
    assert "with probability at most e^-80.2 < 1e-06" in p.message and "population or planned cohort" in p.message
    assert v.sampling_check["memberships"] == 16 and v.sampling_check["has_power"]
    assert main(["verify", str(rd)]) == 1
    capsys.readouterr()


def test_the_untampered_run_passes_the_sampling_check_and_says_when_it_has_no_power(signed_run, capsys):
    # 4 of 6 holders in each of 4 rounds: at q = 4/6 even 16 of 16 memberships are plausible (e^-6.5): no power
    assert main(["verify", str(signed_run)]) == 0
    out = capsys.readouterr().out
    assert "16 cohort memberships in 4 rounds" in out and "the sampling-rate check has no power" in out
    assert "no roster found" in out and "the population 6 behind the sampling rate is the coordinator's claim" in out


def test_the_population_is_checked_against_the_roster(tmp_path, capsys):
    """dp.md §2.1: each server entry's population must be the roster's size (RUN_DIR/pki/roster.yaml, or --roster), and
    keys.json's holder keys the roster's."""
    from securefed.secagg import Roster

    rd = tmp_path / "run"
    _, coord, holder_keys = make_signed_run(rd)
    (rd / "pki").mkdir()
    Roster.from_identities(holder_keys).save(rd / "pki" / "roster.yaml")
    assert main(["verify", str(rd)]) == 0
    assert "no roster found" not in capsys.readouterr().out
    # a roster of 5 holders (kept out of band by the verifier): the ledger's 6 is not the federation's
    five = tmp_path / "roster5.yaml"
    Roster.from_identities({h: k for h, k in holder_keys.items() if h != 6}).save(five)
    assert main(["verify", str(rd), "--roster", str(five)]) == 1
    err = capsys.readouterr().err
    assert "entry 0 (round 1): states population 6, but the roster (" in err and "lists 5 holders" in err
    assert main(["verify", str(rd), "--roster", str(tmp_path / "missing.yaml")]) == 2
    # keys.json naming another key for a holder than the roster does
    keys = json.loads((rd / "privacy" / "keys.json").read_text())
    keys["holders"]["6"] = keys["holders"]["5"]
    (rd / "privacy" / "keys.json").write_text(json.dumps(keys))
    assert main(["verify", str(rd)]) == 1
    assert "keys.json: its holder keys are not the roster's (pki/roster.yaml)" in capsys.readouterr().err
    # and a re-signed ledger claiming 60 holders, with the real roster back in place
    (rd / "privacy" / "keys.json").write_text(json.dumps(dict(keys, holders={str(h): k.public_bytes.hex()
                                                                             for h, k in holder_keys.items()})))
    _resign_server(rd, coord, lambda e: e.update(population=60, sampling_rate=4 / 60))
    assert main(["verify", str(rd)]) == 1
    assert "states population 60, but the roster (pki/roster.yaml) lists 6 holders" in capsys.readouterr().err


def _poisson_cohorts(seed, *, population, q, rounds):
    rng = np.random.default_rng(seed)
    return [tuple(h for h in range(1, population + 1) if rng.random() < q) for _ in range(rounds)]


@pytest.mark.parametrize("seed", range(4))
def test_an_honest_poisson_run_passes_the_sampling_check_and_an_understated_planned_cohort_does_not(tmp_path, seed):
    """Holders cannot check the planned cohort m of q = m/N in any round; their ledgers witness it over many. Cohorts
    drawn by honest Poisson sampling at q = 4/8 over 24 rounds verify (the check has power here: 8 × 24 chances). The
    same cohorts under a ledger that states a planned cohort of 1 (q = 1/8: ε amplified 4× more) do not."""
    from securefed.report.privacy_checks import verify_run

    cohorts = _poisson_cohorts(seed, population=8, q=0.5, rounds=24)
    honest = tmp_path / "honest"
    make_signed_run(honest, rounds=24, population=8, cohort=(1, 2, 3, 4), sampling="poisson", cohorts=cohorts)
    v = verify_run(honest)
    assert v.ok, v.problems
    assert v.sampling_check["has_power"] and v.sampling_check["holders"] == 8
    assert v.sampling_check["memberships"] == sum(len(c) for c in cohorts)
    lying = tmp_path / "lying"
    make_signed_run(lying, rounds=24, population=8, cohort=(1,), sampling="poisson", cohorts=cohorts)
    v = verify_run(lying)
    assert len(v.problems) == 1 and "the stated population or planned cohort" in v.problems[0].message, v.problems


def test_a_holder_ledger_that_releases_a_round_twice_is_caught(signed_run, capsys):
    """An audit (stop 34) re-signed a holder's own ledger with a second 'released' entry for one round — the trace a
    release twice would leave — and verify passed (its ε only rose). A holder releases and settles each round once."""
    from securefed.primitives.keys import generate_identity
    from securefed.primitives.rng import DeterministicEntropy
    from securefed.privacy.holder_ledger import holder_epsilon
    from securefed.privacy.ledger import Ledger

    p = signed_run / "holders" / "1" / "ledger.jsonl"
    es = [{k: v for k, v in json.loads(line).items() if k not in ("seq", "prev_hash", "sig")} for line in _lines(p)]
    es.insert(1, dict(es[0]))                                  # round 1 released again, right after the first
    p.unlink()
    led = Ledger(p, signer=generate_identity(DeterministicEntropy.from_int(900 + 1)))   # holder 1's own key
    for e in es:
        led.append(dict(e, epsilon=holder_epsilon([*led.entries, e], e["delta"])))
    code_v, out_v, code_r, _ = _run_both(signed_run, capsys)
    assert code_v == 1 and code_r != 0 and "a second 'released' entry for round 1" in out_v, out_v


def test_a_settled_entry_claiming_more_noise_than_its_rounds_plan_is_caught(signed_run, capsys):
    """The audit: settled events were never rebuilt from the plan; one re-signed with 100× the noise was caught only
    through the holder's total. Now each settlement must be the server plan's event at its survivor count."""
    from securefed.primitives.keys import generate_identity
    from securefed.primitives.rng import DeterministicEntropy
    from securefed.privacy.holder_ledger import holder_epsilon
    from securefed.privacy.ledger import Ledger

    p = signed_run / "holders" / "2" / "ledger.jsonl"
    es = [{k: v for k, v in json.loads(line).items() if k not in ("seq", "prev_hash", "sig")} for line in _lines(p)]
    settled = next(e for e in es if e["status"] == "settled")
    settled["event"] = dict(settled["event"], noise_multiplier=settled["event"]["noise_multiplier"] * 100)
    p.unlink()
    led = Ledger(p, signer=generate_identity(DeterministicEntropy.from_int(900 + 2)))
    for e in es:
        led.append(dict(e, epsilon=holder_epsilon([*led.entries, e], e["delta"])))
    code_v, out_v, code_r, _ = _run_both(signed_run, capsys)
    assert code_v == 1 and code_r != 0 and f"the holder settled round {settled['round']} with noise_multiplier" in out_v, out_v


def test_a_fixed_size_cohort_larger_than_its_stated_plan_is_caught(tmp_path):
    """An audit (stop 34): a coordinator stated cohort_size_planned 1 (q = 1/50) for fixed-size cohorts of 5 and
    verified at ε 8.25 against 15.21 honest — the witness check had too little power. Under fixed-size sampling a
    cohort is at most its planned size: an entry whose own cohort is larger contradicts the q it states."""
    from securefed.privacy import DPConfig
    from securefed.report.privacy_checks import verify_run

    rd = tmp_path / "run"
    cfg = DPConfig(mode="distributed", noise_multiplier=1.0, clip=1.0, holder_epsilon_cap=None, delta=1e-4)
    make_signed_run(rd, rounds=3, population=50, cohort=(1,), cohorts=[(1, 2, 3, 4, 5)] * 3, cfg=cfg)
    v = verify_run(rd)
    assert not v.ok and "cohort_size 5 contradicts the entry" in str(v.problems[0]) and "planned 1 (fixed" in str(v.problems[0])


def test_a_reason_cannot_open_a_section_of_its_own_in_report_md():
    """An audit (stop 34): a holder's refusal reason with line breaks wrote a fake "## Ledger integrity / VERIFIED"
    section into report.md. Reasons are one plain line there."""
    from securefed.report.privacy_checks import one_line, refusal_lines

    evil = "cap\n\n## Ledger integrity\n\nVERIFIED: holder-level ε = 0.01\x1b[0m"
    lines = refusal_lines({"holder-1": [{"status": "refused", "round": 2, "reason": evil, "cap": None}]}, None, 3, 3)
    assert all("\n" not in x and "\x1b" not in x for x in lines)
    assert one_line(evil) == "cap ## Ledger integrity VERIFIED: holder-level ε = 0.01 [0m"


def test_a_holder_verifying_with_its_own_copy_of_a_ledger_in_the_run_is_not_refused(signed_run, tmp_path, capsys):
    """The README's flow — `verify RUN --holder-ledger MY_LEDGER` — failed when the run directory held the same
    ledger (a simulation's holders/<id>/): "a second own ledger". An identical copy counts once; a different one
    is still a problem."""
    import shutil

    mine = tmp_path / "mine.jsonl"
    shutil.copy(signed_run / "holders" / "1" / "ledger.jsonl", mine)
    assert main(["verify", str(signed_run), "--holder-ledger", str(mine)]) == 0
    assert "is the same ledger as" in capsys.readouterr().out
    mine.write_text("".join(_lines(mine)[:-1]))
    assert main(["verify", str(signed_run), "--holder-ledger", str(mine)]) == 1
    assert "a second own ledger of holder 1 that differs" in capsys.readouterr().err


def test_the_report_states_epsilon_if_holders_collude_and_it_is_the_epsilon_of_fewer_honest_shares(tmp_path, capsys):
    """dp.md §11: under distributed DP, holders of a sum who collude with the server subtract their noise shares.
    `verify` recomputes the ledger's ε with c of each sum's m survivors colluding (max(1, m − c) honest shares),
    and the report states it. Checked against the real accounting of a run where one holder of four dropped out
    (three shares in the sum): its ε is the four-holder run's ε with one colluder, and so on down."""
    from securefed.privacy import DPConfig
    from securefed.report.privacy_checks import verify_run

    cfg = DPConfig(mode="distributed", noise_multiplier=1.0, clip=1.0, holder_epsilon_cap=None, delta=1e-4)
    full, dropped = tmp_path / "full", tmp_path / "dropped"
    make_signed_run(full, rounds=1, cfg=cfg)
    make_signed_run(dropped, rounds=1, cfg=cfg, drop_last_holder_at=1)
    va, vb = verify_run(full), verify_run(dropped)
    assert va.ok and vb.ok and sorted(va.colluding_epsilon) == [1, 2, 3] and sorted(vb.colluding_epsilon) == [1, 2]
    # cohorts of 4 of 6 (q = 2/3): the colluders' server knows the cohorts, so no amplification (PV-52): one colluder
    # leaves a holder what the server's (unamplified) view charges holder 1 in a sum of three shares
    assert np.isclose(va.colluding_epsilon[1], vb.holder_view_epsilon[1], rtol=1e-12)
    assert np.isclose(va.colluding_epsilon[2], vb.colluding_epsilon[1], rtol=1e-12)
    assert va.epsilon < va.colluding_epsilon[1] < va.colluding_epsilon[2] < va.colluding_epsilon[3]
    longer = tmp_path / "longer"                                     # three rounds, the last with a dropout
    make_signed_run(longer, rounds=3, cfg=cfg, drop_last_holder_at=3)
    vc = verify_run(longer)
    assert vc.ok and vc.epsilon < vc.colluding_epsilon[1] < vc.colluding_epsilon[2] < vc.colluding_epsilon[3]
    assert main(["verify", str(full)]) == 0
    out = capsys.readouterr().out
    assert f"epsilon={epsilon_text(va.colluding_epsilon[3], 6)} if 3 holder(s) of each sum collude" in out, out
    assert "no amplification: the server knows the cohorts, so this is for a holder in every sum" in out
    assert main(["report", str(full)]) == 0
    capsys.readouterr()
    md = (full / "report" / "report.md").read_text()
    rep = json.loads((full / "report" / "report.json").read_text())
    assert set(rep["verification"]["colluding_epsilon"]) == {"1", "2", "3"}
    assert "Collusion:" in md and "if 1 holder of each sum colludes" in md and "if 3 holders of each sum collude" in md
    assert ("recomputed from the same ledger without amplification by sampling (the server knows the cohorts), for a "
            "holder in every sum") in md
    central = tmp_path / "central"                                  # the server's own noise: collusion changes nothing
    make_signed_run(central, rounds=1, cfg=DPConfig(mode="central", mechanism="gaussian", noise_multiplier=1.0, clip=1.0,
                                                   holder_epsilon_cap=None, delta=1e-4))
    vd = verify_run(central)
    assert vd.ok and vd.colluding_epsilon == {}


def test_verify_names_the_unit_the_relation_and_against_whom_an_amplified_epsilon_holds(tmp_path, capsys):
    """A compliance review (stop 51): verify's one line "privacy: epsilon=7.99554 delta=1e-05" named neither the unit
    nor the neighbouring relation, and for a 3-of-6 run it did not say that this ε is amplified by sampling and holds
    only against whoever does not know the cohorts (not the coordinator), while the report said so."""
    from securefed.cli import main
    from securefed.privacy import DPConfig
    from tests.report.signed_run import make_signed_run

    cfg = DPConfig(mode="distributed", noise_multiplier=1.0, clip=1.0, delta=1e-5)
    rd = tmp_path / "sampled"
    make_signed_run(rd, cfg=cfg, population=6, cohort=(1, 2, 3, 4))        # a fixed cohort of 4 of 6: q = 2/3
    assert main(["verify", str(rd)]) == 0
    out = capsys.readouterr().out
    assert "privacy: holder-level epsilon=" in out and "(replace-one neighbours, one holder; recomputed from 4" in out
    assert ("privacy: that epsilon is amplified by sampling the cohorts (q=0.666667): it holds only against whoever does "
            "not know the cohorts; against the coordinator, and any reader of the ledgers, each holder's own epsilon "
            "below holds") in out
    assert "holder 1: own holder-level epsilon=" in out and "(no amplification; server's view" in out
    rd = tmp_path / "every"
    make_signed_run(rd, cfg=cfg, population=4, cohort=(1, 2, 3, 4))        # q = 1: nothing amplified
    assert main(["verify", str(rd)]) == 0
    out = capsys.readouterr().out
    assert "privacy: holder-level epsilon=" in out and "amplified" not in out


def test_the_epsilon_if_holders_collude_with_the_server_is_never_amplified_by_sampling(tmp_path):
    """PV-52 (a compliance review, distributed Skellam, Poisson cohorts of 4 of 6 over 4 rounds): verify and the report
    stated "ε = 5.066 if 1 holder of each sum colludes with the server", amplified by sampling at q = 2/3 — but the
    coalition includes the server, which knows every cohort, and against it a holder in all 4 sums is at 5.482 (its
    own, unamplified view recomputed with one share fewer). Now never amplified: for a holder in every sum, it is the
    server's view of such a holder with c shares fewer, and at least what that holder's own ledger states."""
    from securefed.privacy import DPConfig
    from securefed.report.privacy_checks import verify_run

    cfg = DPConfig(mode="distributed", noise_multiplier=1.0, clip=1.0, holder_epsilon_cap=None, delta=1e-4)
    rd, three = tmp_path / "run", tmp_path / "three"
    make_signed_run(rd, rounds=1, cfg=cfg, population=8, cohort=(1, 2, 3, 4))          # q = 4/8
    # the same sum with one share fewer: holder 4 released, then dropped (shares sized for 4, three in the sum)
    make_signed_run(three, rounds=1, cfg=cfg, population=8, cohort=(1, 2, 3, 4), drop_last_holder_at=1)
    v, w = verify_run(rd), verify_run(three)
    assert v.ok and w.ok and v.epsilon < v.holder_view_epsilon[1]                        # amplification is real
    assert np.isclose(v.colluding_epsilon[1], w.holder_view_epsilon[1], rtol=1e-12)
    assert v.colluding_epsilon[1] > v.holder_own_epsilon[1]


def test_verify_names_each_record_level_unit_and_relation_the_holders_signed_and_the_exceptions(tmp_path, capsys):
    """PV-54 (a compliance review): verify's record-level lines read "per document" in words of their own, named no
    neighbouring relation and none of the exceptions the report states (reply timing of holders whose steps were not
    padded; membership through the record count). They now take the unit and the relation from the holders' verified
    signed releases, in the report's words (record_level.record_unit_words, coordinator_exceptions)."""
    from securefed.report.record_level import coordinator_exceptions, record_unit_words

    rd = tmp_path / "run"
    make_signed_run(rd, dp_sgd_steps=4, dp_sgd_units={1: "document", 2: "document", 3: "sequence", 4: "document"},
                    config={"train": {"dp_sgd": {"enabled": True, "unit": "sequence", "delta": 1e-5}}})
    assert main(["verify", str(rd)]) == 0
    out = capsys.readouterr().out
    rl = {"unit": "document"}
    assert record_unit_words({"record_level": {"1": rl}}) == "one document"
    assert "holder 1: record-level epsilon=" in out and "(add/remove neighbours, one document; recomputed from its" in out
    assert "holder 3: record-level epsilon=" in out and "(add/remove neighbours, one training sequence (a packed row);" in out
    assert "per training sequence" not in out                       # the old wording of its own is gone
    f = {"dp_sgd": {"enabled": True, "unit": "sequence", "sample_rate": None},
         "record_level": {str(h): {"unit": "sequence"} for h in (1, 2, 3, 4)}}
    said = coordinator_exceptions(f)
    assert len(said) == 2 and all(f"privacy: record-level exception (protocols/dp.md §10): {c}" in out for c in said)


def test_a_summary_record_unit_other_than_the_holders_signed_one_does_not_verify(tmp_path, capsys):
    """PV-55: summary.json's record_unit was config.yaml's train.dp_sgd.unit (the coordinator's; in a deployment each
    holder's own holder.yaml decides) and verify did not check it: a document run stated "sequence" and verified.
    It must now be the unit each verified holder signed (a string, or one per holder where they differ)."""
    rd = tmp_path / "run"
    units = {1: "document", 2: "document", 3: "sequence", 4: "document"}
    make_signed_run(rd, dp_sgd_steps=4, dp_sgd_units=units)
    p = rd / "summary.json"
    honest = json.loads(p.read_text())
    honest.pop("record_unit", None)
    for unit, code in [({str(h): u for h, u in units.items()}, 0), ("sequence", 1), ("document", 1),
                       (dict({str(h): u for h, u in units.items()}, **{"3": "document"}), 1)]:
        p.write_text(json.dumps(dict(honest, record_unit=unit, record_neighbouring_relation="add/remove")))
        code_v, out_v, code_r, out_r = _run_both(rd, capsys)
        assert (code_v, code_r) == (code, code), (unit, out_v, out_r)
        if code:
            assert "summary.json" in out_v and "states record_unit" in out_v and "its own signed releases record" in out_v
    p.write_text(json.dumps(dict(honest, record_neighbouring_relation="replace-one")))
    assert main(["verify", str(rd)]) == 1 and "states record_neighbouring_relation 'replace-one'" in capsys.readouterr().err
    from securefed.privacy.holder_ledger import signed_record_units   # what the coordinator now writes

    rd2 = tmp_path / "same"
    make_signed_run(rd2, dp_sgd_steps=4, dp_sgd_units={h: "document" for h in units})
    assert signed_record_units({h: rd / "holders" / str(h) / "ledger.jsonl" for h in units}) == {
        str(h): u for h, u in units.items()}
    assert signed_record_units({h: rd2 / "holders" / str(h) / "ledger.jsonl" for h in units}) == "document"
    assert signed_record_units({}) is None                          # a deployment's coordinator states no unit


def test_the_banner_ends_one_sentence_with_one_full_stop():
    """A problem whose message ends its own sentence read "….. No ε can be stated." (a newcomer's walkthrough)."""
    from securefed.privacy.verify import Problem, Verification

    v = Verification()
    v.problems.append(Problem("ledger.jsonl", 3, 2, "the chain is broken here."))
    assert v.banner() == ("PRIVACY RECORDS DO NOT VERIFY — first bad entry: ledger.jsonl entry 3 (round 2): the "
                          "chain is broken here. No ε can be stated.")
