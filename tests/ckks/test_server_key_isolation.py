"""protocols/ckks.md §3.3: the server never holds the CKKS secret key.

Every context the server object is handed is captured at its entry points and inspected; every
TenSEAL object reachable from the server's state is inspected too.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tenseal as ts

from securefed.ckks import CkksServer, ContextRejected, run_ckks_round, setup_keyring
from securefed.ckks import holder as holder_mod
from securefed.ckks import keys
from securefed.ckks.messages import KeyAdvertMsg, KeyShareMsg, PublicContextMsg, decode

from ._ckks_util import entropy_for, vectors


class SpyServer(CkksServer):
    """Records every byte string handed to the server role."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.seen_pubctx: list[bytes] = []
        self.seen_relay: list[bytes] = []
        self.seen_uploads: list[bytes] = []

    def receive_public_context(self, data, **k):
        self.seen_pubctx.append(data)
        return super().receive_public_context(data, **k)

    def relay(self, data):
        self.seen_relay.append(data)
        return super().relay(data)

    def receive_upload(self, holder, data):
        self.seen_uploads.append(data)
        return super().receive_upload(holder, data)


def _tenseal_objects(obj, seen=None):
    """Every ts.Context / ts.CKKSVector reachable from ``obj``'s attributes."""
    seen = set() if seen is None else seen
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, (ts.Context, ts.CKKSVector)):
        yield obj
        return
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _tenseal_objects(v, seen)
    elif isinstance(obj, (list, tuple, set, frozenset)):
        for v in obj:
            yield from _tenseal_objects(v, seen)
    elif hasattr(obj, "__dict__") and not isinstance(obj, type):
        yield from _tenseal_objects(vars(obj), seen)


def test_server_never_receives_or_holds_a_secret_key(policy):
    pol = dataclasses.replace(policy, key_scope="cohort", rotate_key_every_rounds=2)
    kr = setup_keyring(range(6), policy=pol, entropy_for=entropy_for)
    server = SpyServer(pol, kr.roster)
    # generations: r0 first key; r1 cohort change; r2 new epoch; r3 none; r4 new epoch + cohort
    cohorts = [range(6), range(1, 5), range(1, 5), range(1, 5), range(6)]
    for r, cohort in enumerate(cohorts):
        xs = vectors(6, 100, seed=r)
        run_ckks_round({h: xs[h] for h in cohort}, policy=pol, round_index=r, keyring=kr,
                       entropy_for=entropy_for, server=server)
    assert kr.generation == 4 and len(server.seen_pubctx) == 4 and server.seen_relay
    # 1. every context handed to the server deserialises to a context WITHOUT a secret key
    for wire in server.seen_pubctx:
        msg = decode(wire)
        assert isinstance(msg, PublicContextMsg)
        ctx = ts.context_from(msg.context)
        assert not ctx.has_secret_key() and ctx.is_public()
    # 2. every context the server kept, and every TenSEAL object reachable from it, is public
    objs = list(_tenseal_objects(server))
    assert len(server.contexts) == 4 and objs
    for o in objs:
        ctx = o if isinstance(o, ts.Context) else o.context()
        assert not ctx.has_secret_key()
    # 3. what the server relays is sealed: the secret context does not appear in it, and the
    #    server's contexts cannot decrypt a holder's ciphertext
    holder_secret = keys.secret_context_bytes(kr.holder(1)._ctx)
    kinds = {type(decode(w)) for w in server.seen_relay}
    assert kinds == {KeyShareMsg, KeyAdvertMsg}
    for wire in server.seen_relay:
        assert holder_secret[-4096:-4032] not in wire and holder_secret[1000:1064] not in wire
    vec = ts.ckks_vector_from(server.contexts[-1], decode(server.seen_uploads[-1]).ciphertexts[0])
    with pytest.raises(ValueError):
        vec.decrypt()


def test_a_leader_sending_its_secret_context_is_refused(policy, monkeypatch):
    """A buggy/malicious leader signs and sends the PRIVATE context: the server refuses it, keeps
    nothing, and the round fails closed."""
    monkeypatch.setattr(holder_mod.keys, "public_context_bytes", keys.secret_context_bytes)
    kr = setup_keyring(range(3), policy=policy, entropy_for=entropy_for)
    server = CkksServer(policy, kr.roster)
    with pytest.raises(ContextRejected, match="secret key"):
        run_ckks_round(vectors(3, 10), policy=policy, round_index=0, keyring=kr, entropy_for=entropy_for,
                       server=server)
    assert len(server.contexts) == 0 and server.key_id is None
    assert not any(isinstance(o, ts.Context) for o in _tenseal_objects(server))


def test_public_context_from_a_non_leader_or_forged_is_refused(policy):
    kr = setup_keyring(range(3), policy=policy, entropy_for=entropy_for)
    run_ckks_round(vectors(3, 10), policy=policy, round_index=0, keyring=kr, entropy_for=entropy_for)
    server = CkksServer(policy, kr.roster)
    good = kr._pubctx
    msg = decode(good)
    # generation 1's leader is sorted({0,1,2})[1] = 1; claim it came from holder 2
    from securefed.ckks.messages import encode

    with pytest.raises(ValueError, match="not this generation's leader"):
        server.receive_public_context(encode(dataclasses.replace(msg, leader=2)), key_holders=frozenset(range(3)))
    with pytest.raises(ValueError, match="failed authentication"):
        server.receive_public_context(encode(dataclasses.replace(msg, signature=bytes(64))),
                                      key_holders=frozenset(range(3)))
    server.receive_public_context(good, key_holders=frozenset(range(3)))
    with pytest.raises(ValueError, match="not newer"):  # replay of the same generation
        server.receive_public_context(good, key_holders=frozenset(range(3)))
    assert len(server.contexts) == 1


def test_rotation_schedule_cohort_and_roster_changes(policy):
    pol = dataclasses.replace(policy, rotate_key_every_rounds=2)
    kr = setup_keyring(range(4), policy=pol, entropy_for=entropy_for)
    xs = vectors(4, 10)
    gens, leaders = [], []
    for r, cohort in enumerate([range(4), range(4), range(4), range(3), range(3)]):
        run_ckks_round({h: xs[h] for h in cohort}, policy=pol, round_index=r, keyring=kr, entropy_for=entropy_for)
        gens.append(kr.generation)
        leaders.append(decode(kr._pubctx).leader)
    # epochs (2 rounds each) 0,0,1,1,2: rounds 0,1 share a key; round 2 is a new epoch; round 3 a
    # new cohort in the same epoch; round 4 a new epoch
    assert gens == [1, 1, 2, 3, 4]
    assert leaders == [1, 1, 2, 0, 1]  # sorted(key holders)[generation mod |key holders|]
    assert not kr.holder(3).has_key  # left the key holders: deleted its copy
    # roster change: every key is dropped and the next round re-keys
    from securefed.ckks import HolderSecrets

    ids = {i: kr.holder(i).secrets for i in range(3)} | {7: HolderSecrets.generate(7, entropy_for(7))}
    kr.update_roster(ids)
    assert kr.key_id is None and not kr.holder(0).has_key
    out = run_ckks_round({h: xs[h % 4] for h in (0, 1, 7)}, policy=pol, round_index=5, keyring=kr,
                         entropy_for=entropy_for)
    assert kr.generation == 5 and out.survivors == {0, 1, 7}
    kr.update_roster(ids)  # same roster: nothing changes
    assert kr.key_id is not None and kr.holder(0).has_key
    ids[1] = HolderSecrets.generate(1, entropy_for(1))  # holder 1 re-keys its identity: re-key
    kr.update_roster(ids)
    assert kr.key_id is None and kr.roster[1].ed25519 == ids[1].public().ed25519


def test_roster_scope_does_not_rekey_on_cohort_change(policy):
    pol = dataclasses.replace(policy, key_scope="roster", rotate_key_every_rounds=100)
    kr = setup_keyring(range(4), policy=pol, entropy_for=entropy_for)
    xs = vectors(4, 10)
    run_ckks_round(xs, policy=pol, round_index=0, keyring=kr, entropy_for=entropy_for)
    out = run_ckks_round({0: xs[0], 2: xs[2]}, policy=pol, round_index=1, keyring=kr, entropy_for=entropy_for)
    assert kr.generation == 1 and out.survivors == {0, 2}
    assert np.max(np.abs(out.total - xs[0] - xs[2])) <= pol.error_bound(2, 1.0)


def test_persistent_server_skips_the_public_context(policy):
    pol = dataclasses.replace(policy, rotate_key_every_rounds=10)
    kr = setup_keyring(range(4), policy=pol, entropy_for=entropy_for)
    xs = vectors(4, 10)
    server = CkksServer(pol, kr.roster)
    first = run_ckks_round(xs, policy=pol, round_index=0, keyring=kr, entropy_for=entropy_for, server=server)
    second = run_ckks_round(xs, policy=pol, round_index=1, keyring=kr, entropy_for=entropy_for, server=server)
    fresh = run_ckks_round(xs, policy=pol, round_index=2, keyring=kr, entropy_for=entropy_for)
    # round 0: public context + 3 key shares + 4 uploads; round 1: 4 uploads only (+ release)
    assert second.bytes_up < fresh.bytes_up < first.bytes_up
    assert fresh.bytes_up - second.bytes_up == len(kr._pubctx)


def test_make_keyring_with_roster_identities(policy):
    """The runtime passes the roster's Ed25519 IdentityKeys; holder ids start at 1 there."""
    from securefed.ckks import make_keyring
    from securefed.primitives.keys import generate_identity

    ids = {h: generate_identity(entropy_for(h)) for h in (1, 2, 3)}
    kr = make_keyring([1, 2, 3], policy=policy, identities=ids)
    assert {h: p.ed25519 for h, p in kr.roster.items()} == {h: k.public_bytes for h, k in ids.items()}
    xs = vectors(3, 10)
    out = run_ckks_round({h + 1: x for h, x in xs.items()}, policy=policy, round_index=0, keyring=kr,
                         entropy_for=entropy_for)
    assert out.survivors == {1, 2, 3}
    assert np.max(np.abs(out.total - sum(xs.values()))) <= policy.error_bound(3, 1.0)
    assert make_keyring([4, 5], policy=policy).roster.keys() == {4, 5}  # OS entropy when none given
