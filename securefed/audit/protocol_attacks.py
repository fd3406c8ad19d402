"""Attacks on the secure-aggregation protocol itself, run against the real state machines.

Each function plays the adversary of threat_models/secure_aggregation.md (A2 active server, A3 lying
holder, A4 network) through :class:`~securefed.audit.harness.Round` and returns a Finding.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from securefed.audit.findings import MITIGATED, RESIDUAL, Finding
from securefed.audit.harness import Round
from securefed.primitives import shamir
from securefed.primitives.keys import X25519KeyPair, generate_identity
from securefed.primitives.rng import DeterministicEntropy
from securefed.secagg import decode, encode
from securefed.secagg.messages import (KIND_B, KIND_S, ForwardedShares, KeyRoster, SurvivorList, UnmaskRequest,
                                       UnmaskShares)

__all__ = ["lying_dropouts", "key_substitution", "sybil_holders", "model_inconsistency", "replay", "bad_shares"]


def _shares_of(replies: dict[int, bytes], x: int) -> dict[int, int]:
    """How many b-shares (KIND_B) and s-shares (KIND_S) of holder x the server collected."""
    got = {KIND_B: 0, KIND_S: 0}
    for data in replies.values():
        m = decode(data)
        if isinstance(m, UnmaskShares):
            for j, kind, _ in m.shares:
                if j == x:
                    got[kind] += 1
    return got


def lying_dropouts() -> Finding:
    """A2 claims survivor x dropped, to get both its self-mask seed b_x and its masking key s_x."""
    x, ev = 1, {}
    # (a) x listed as both alive and dropped
    r = Round(n=7).steps(4)
    req = r.message_for(2)
    forged = UnmaskRequest(req.alive, tuple(sorted(set(req.dropped) | {x})), req.signatures)
    got = _shares_of(r.deliver({i: encode(forged) for i in r.outbox}), x)
    ev["a_alive_and_dropped"] = {"holders_aborted": len(r.aborted), "b_shares": got[KIND_B], "s_shares": got[KIND_S]}
    # (b) x moved from alive to dropped (survivor list no longer the one the holders signed)
    r = Round(n=7).steps(4)
    req = r.message_for(2)
    forged = UnmaskRequest(tuple(j for j in req.alive if j != x), tuple(sorted(set(req.dropped) | {x})),
                           tuple((j, s) for j, s in req.signatures if j != x))
    got_s = _shares_of(r.deliver({i: encode(forged) for i in r.outbox if i != x}), x)
    ev["b_moved_to_dropped"] = {"holders_aborted": len(r.aborted), "s_shares": got_s[KIND_S]}
    # (c) split view: group A is told x dropped, group B (with x) that x survived
    r = Round(n=7).steps(3)
    u3 = decode(r.outbox[x]).survivors
    group_a, group_b = [2, 3, 4], [1, 5, 6, 7]
    lie = encode(SurvivorList(tuple(j for j in u3 if j != x)))
    sigs = r.deliver({i: (lie if i in group_a else r.outbox[i]) for i in r.outbox})
    sig = {i: decode(s).signature for i, s in sigs.items()}
    t, t_min = r.server.start.threshold, r.server.start.min_survivors
    to_b = UnmaskRequest(u3, (), tuple((i, sig[i]) for i in group_b))
    to_a = UnmaskRequest(tuple(j for j in u3 if j != x), (x,), tuple((i, sig[i]) for i in group_a))
    to_a_stolen = UnmaskRequest(tuple(j for j in u3 if j != x), (x,), tuple((i, sig[i]) for i in group_b if i != x))
    got_b = _shares_of(r.deliver({i: encode(to_b) for i in group_b}), x)
    got_a = _shares_of(r.deliver({i: encode(to_a) for i in group_a}), x)
    got_a2 = _shares_of(r.deliver({i: encode(to_a_stolen) for i in group_a}), x)
    ev["c_split_view"] = {"t": t, "t_min": t_min, "group_told_dropped": group_a, "b_shares": got_b[KIND_B],
                          "s_shares": got_a[KIND_S] + got_a2[KIND_S], "aborted": sorted(r.aborted)}
    ok = (ev["a_alive_and_dropped"]["s_shares"] == 0 and ev["b_moved_to_dropped"]["s_shares"] == 0
          and ev["c_split_view"]["s_shares"] < t)
    return Finding("SEC-01", "Server lies about dropouts to unmask a holder", MITIGATED if ok else "VULNERABLE",
                   "Three lies were told about survivor x (alive ∩ dropped; x moved to dropped; split survivor views). "
                   f"The server never held t={t} s-shares of x next to its b-shares: C6–C8 (alive list = signed U3, "
                   "disjoint lists, ≥ t_min consistency signatures, and t_min is a strict majority so two views "
                   "cannot both collect t_min signatures).", ev, ("SA-02", "SA-07", "SYS-03"))


def key_substitution() -> Finding:
    """A2/A4 replaces holder 2's advertised X25519 keys with its own (man in the middle)."""
    ev = {}
    attacker = X25519KeyPair.generate(DeterministicEntropy.from_int(666))
    rogue_id = generate_identity(DeterministicEntropy.from_int(667))
    for variant in ("keep_signature", "resign_with_rogue_key"):
        r = Round(n=7).step()
        adverts = []
        for a in decode(r.outbox[1]).adverts:
            if a.sender == 2:
                a = dataclasses.replace(a, c_public=attacker.public, s_public=attacker.public)
                if variant == "resign_with_rogue_key":
                    a = dataclasses.replace(a, signature=rogue_id.sign(b"anything the attacker likes"))
            adverts.append(a)
        forged = encode(KeyRoster(tuple(adverts)))
        replies = r.deliver({i: forged for i in r.outbox if i != 2})
        ev[variant] = {"holders_aborted": len(r.aborted), "shares_sent_to_attacker_key": len(replies)}
    # A4 flips one bit of a share ciphertext in transit: AES-GCM rejects it, the receiver holds nothing from it
    r = Round(n=7).steps(2)
    fs = decode(r.outbox[3])
    j, ct = fs.ciphertexts[0]
    bad = bytearray(ct)
    bad[10] ^= 1
    r.outbox[3] = encode(ForwardedShares(((j, bytes(bad)),) + fs.ciphertexts[1:]))
    r.deliver()
    ev["tampered_share_ciphertext"] = {"receiver_holds_tampered_senders_share": j in (r.clients[3]._held or {}),
                                       "receiver_aborted": 3 in r.aborted,
                                       "shares_held_by_receiver": len(r.clients[3]._held or {}),
                                       "cohort": 7}
    ok = all(ev[v]["shares_sent_to_attacker_key"] == 0 for v in ("keep_signature", "resign_with_rogue_key")) \
        and not ev["tampered_share_ciphertext"]["receiver_holds_tampered_senders_share"]
    return Finding("SEC-02", "Server substitutes holders' public keys (MITM)", MITIGATED if ok else "VULNERABLE",
                   "Every holder refused a key roster with a substituted key (Ed25519 advertisement signatures under "
                   "roster keys, C2), so no share was ever encrypted to the attacker; a flipped bit in a share "
                   "ciphertext fails AES-GCM and the share is discarded.", ev, ("SA-03", "SA-10", "SYS-03"))


def sybil_holders() -> Finding:
    """A2 adds holders that are not on the roster (to reach t_min with identities it controls)."""
    ev = {}
    r = Round(n=7)
    fake = dataclasses.replace(r.server.start, cohort=r.server.start.cohort + (99, 100, 101))
    r.deliver({i: encode(fake) for i in r.outbox})
    ev["cohort_with_unrostered_ids"] = {"holders_aborted": len(r.aborted), "of": 7}
    # a Sybil that reuses a roster id but signs with its own key (it lacks that holder's identity key)
    r = Round(n=7).step()
    rogue = generate_identity(DeterministicEntropy.from_int(4242))
    adverts = list(decode(r.outbox[1]).adverts)
    sybil = dataclasses.replace(adverts[-1], signature=rogue.sign(b"x"))
    forged = encode(KeyRoster(tuple(adverts[:-1]) + (sybil,)))
    r.deliver({i: forged for i in r.outbox if i != adverts[-1].sender})
    ev["sybil_with_roster_id"] = {"holders_aborted": len(r.aborted), "of": 6}
    try:
        Round(n=7, cohort=[1, 2, 3, 99])
        ev["server_refuses_unrostered_cohort"] = False
    except (ValueError, KeyError):
        ev["server_refuses_unrostered_cohort"] = True
    ok = (ev["cohort_with_unrostered_ids"]["holders_aborted"] == 7 and ev["sybil_with_roster_id"]["holders_aborted"] == 6
          and ev["server_refuses_unrostered_cohort"])
    return Finding("SEC-03", "Sybil holders beyond the roster", MITIGATED if ok else "VULNERABLE",
                   "Holders abort on a cohort naming ids outside the roster (C1) and on advertisements not signed by "
                   "the roster key of their id (C2). Residual: whoever distributes the roster decides who is a holder "
                   "(trust assumption, system.md).", ev, ("SA-04", "SYS-04"))


def model_inconsistency() -> Finding:
    """Pasquini et al. (CCS 2022): a different global model to the target, so its update can be isolated."""
    x, ev = 1, {}
    other_model = b"securefed-audit/model-sha256:" + bytes([1]) * 32
    # (a) the target gets a RoundStart for its own (malicious) model; the server shows all adverts to everyone
    r = Round(n=7, client_ctx={x: other_model})
    start_x = dataclasses.replace(r.server.start, context=other_model)
    replies = r.deliver({i: (encode(start_x) if i == x else d) for i, d in r.outbox.items()})
    everyone = encode(KeyRoster(tuple(decode(replies[i]) for i in sorted(replies))))
    r.deliver({i: everyone for i in replies})
    ev["a_all_adverts_to_all"] = {"holders_aborted": len(r.aborted), "of": 7}
    # (b) the others run without the target; the target is shown the others' adverts
    r = Round(n=7, client_ctx={x: other_model})
    replies = r.deliver({i: (encode(start_x) if i == x else d) for i, d in r.outbox.items()})
    r.forward(replies)  # the honest server code rejects x's advertisement (S2)
    r.deliver({x: encode(KeyRoster(tuple(decode(replies[i]) for i in sorted(replies))))})
    r.steps(4)
    total_ok = bool(np.array_equal(r.server.result, r.expected_sum([i for i in r.cohort if i != x])))
    ev["b_target_isolated"] = {"target_aborted": x in r.aborted, "target_in_sum": x in r.server.survivors,
                               "sum_is_others_only": total_ok}
    ok = ev["a_all_adverts_to_all"]["holders_aborted"] == 7 and ev["b_target_isolated"]["target_aborted"]
    return Finding("SEC-04", "Model inconsistency: a different global model to one holder (Pasquini et al. CCS'22)",
                   MITIGATED if ok else "VULNERABLE",
                   "The global-model hash is the session context, checked by each holder against the model it received "
                   "(C1) and bound into every signature through the params hash (C2): a holder with another model "
                   "cannot share a round with the rest. Residual: a malicious model sent to everyone alike (trap "
                   "weights) is not detected; DP bounds what it extracts.", ev, ("SA-06", "SYS-05"))


def replay() -> Finding:
    """Messages recorded in round 0 replayed in round 1 (same model, same identities)."""
    ev = {}
    r0 = Round(n=7, round_index=0)
    sent0 = [dict(r0.outbox)]
    for _ in range(5):
        r0.step()
        sent0.append(dict(r0.outbox))
    fed = (r0.identities, r0.roster)
    # (a) a holder's round-0 advertisement replayed to the round-1 server
    r1 = Round(n=7, round_index=1, federation_=fed, seed=1)
    replies = r1.deliver()
    replies[3] = r0.replies[0][3]
    r1.forward(replies)
    ev["advert_replayed_to_server"] = {"dropped_as_offender": 3 in r1.server.offenders}
    # (b) the round-0 key roster replayed to the round-1 holders
    r1 = Round(n=7, round_index=1, federation_=fed, seed=1).step()
    r1.deliver({i: sent0[1][i] for i in r1.outbox})
    ev["key_roster_replayed_to_holders"] = {"holders_aborted": len(r1.aborted), "of": 7}
    # (c) a holder's round-0 masked input replayed in round 1 (possible only without the transport's mTLS)
    r1 = Round(n=7, round_index=1, federation_=fed, seed=1).steps(2)
    replies = r1.deliver()
    replies[3] = r0.replies[2][3]
    r1.forward(replies)
    r1.steps(2)
    ev["masked_input_replayed"] = {"accepted_by_secagg": 3 in r1.server.survivors,
                                   "sum_correct": bool(np.array_equal(r1.server.result, r1.expected_sum(r1.cohort))),
                                   "detected_by_secagg": False}
    ok = ev["advert_replayed_to_server"]["dropped_as_offender"] and ev["key_roster_replayed_to_holders"]["holders_aborted"] == 7
    return Finding("SEC-05", "Replay of an earlier round's messages", RESIDUAL if ok else "VULNERABLE",
                   "Signed messages (advertisements, key rosters, consistency signatures) and AEAD shares are bound to "
                   "the round's params hash / session id and are refused when replayed. A replayed MaskedInput is NOT "
                   "authenticated by secagg: it is accepted and silently corrupts the sum (no privacy loss: the "
                   "server still learns only a sum). In deployment the mTLS channel and the frame header (run id, "
                   "round, stage; TR-04/TR-06) stop it; an in-process caller must not feed untrusted bytes. Hardening: "
                   "have each holder sign SHA-256(sid ‖ y_i) in its ConsistencySignature and the server check it.",
                   ev, ("SA-05", "TR-06", "SYS-06"))


def bad_shares() -> Finding:
    """A3 sends corrupted, out-of-field and misaddressed Shamir shares at unmasking."""
    ev = {}

    for variant in ("wrong_value", "out_of_field", "share_of_non_neighbour_kind"):
        r = Round(n=7).steps(4)
        replies = r.deliver()
        m = decode(replies[1])  # holder 1 has the smallest x: its shares are among the first t used
        shares = list(m.shares)
        j, kind, s = shares[-1]
        if variant == "wrong_value":
            shares[-1] = (j, kind, shamir.share_to_bytes((shamir.share_from_bytes(s) + 1) % shamir.PRIME))
        elif variant == "out_of_field":
            shares[-1] = (j, kind, b"\xff" * len(s))
        else:
            shares[-1] = (j, KIND_S, s)  # an s-share of a survivor: C7 forbids it
        try:
            replies[1] = encode(UnmaskShares(1, tuple(shares)))
        except Exception as e:  # the serializer itself refuses: report it as such
            ev[variant] = {"refused_by_serializer": str(e)[:80]}
            continue
        outcome = {}
        try:
            r.forward(replies)
            outcome["sum_correct"] = bool(np.array_equal(r.server.result, r.expected_sum(r.server.survivors)))
            outcome["offender_dropped"] = 1 in r.server.offenders
        except Exception as e:
            outcome["aborted"] = type(e).__name__ + ": " + str(e)[:90]
        ev[variant] = outcome
    wrong_results = [v for v, o in ev.items() if o.get("sum_correct") is False]
    return Finding("SEC-06", "Malformed and inconsistent Shamir shares", MITIGATED if not wrong_results else "VULNERABLE",
                   "A malformed share drops its sender (S6); a wrong value is skipped: the server rebuilds the secret "
                   "from another t shares that pass its check (b_i against its commitment, s_i against its advertised "
                   "public key; secagg.md §6.4, SA-21), and aborts (S7) only when none does; no variant produced a "
                   "wrong sum. Residual: a holder that dealt inconsistent shares of its own b_i still aborts the round "
                   "(denial of service; verifiable secret sharing would stop it).", ev, ("SA-13", "SA-12", "SA-21", "SYS-07"))
