"""Every (stage, message) pair of the client and server transition tables (protocols/secagg.md §6)."""

import pytest

from securefed.secagg import (CLIENT_TRANSITIONS, SERVER_TRANSITIONS, ClientStage, ServerStage, UnexpectedMessage,
                              encode)

from tests.secagg.helpers import Harness
from tests.secagg.samples import SAMPLES

CLIENT_ORDER = [ClientStage.AWAIT_ROUND_START, ClientStage.AWAIT_KEYS, ClientStage.AWAIT_SHARES,
                ClientStage.AWAIT_SURVIVORS, ClientStage.AWAIT_UNMASK, ClientStage.DONE]
SERVER_ORDER = [ServerStage.COLLECT_ADVERTISE, ServerStage.COLLECT_SHARES, ServerStage.COLLECT_MASKED,
                ServerStage.COLLECT_SIGNATURES, ServerStage.COLLECT_UNMASK]


def test_tables_cover_the_protocol_in_order():
    assert [CLIENT_TRANSITIONS[s][1] for s in CLIENT_ORDER[:-1]] == CLIENT_ORDER[1:]
    assert [SERVER_TRANSITIONS[s][1] for s in SERVER_ORDER] == SERVER_ORDER[1:] + [ServerStage.FINISHED]


@pytest.mark.parametrize("k", range(6))
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda m: type(m).__name__)
def test_client_rejects_every_unexpected_message(k, sample):
    h = Harness(n=5).steps(k)
    c = h.clients[1]
    stage = CLIENT_ORDER[k]
    assert c.stage is stage
    accepted = CLIENT_TRANSITIONS.get(stage, (None,))[0]
    if type(sample) is accepted:
        h.clients[1].handle(h.outbox[1])  # the real message of this stage is accepted…
        assert c.stage is CLIENT_TRANSITIONS[stage][1]
        return
    with pytest.raises(UnexpectedMessage):
        c.handle(encode(sample))
    assert c.stage is stage  # …anything else leaves the state unchanged


def test_client_rejects_malformed_bytes_without_state_change():
    h = Harness(n=5)
    with pytest.raises(UnexpectedMessage, match="malformed"):
        h.clients[1].handle(b"garbage")
    assert h.clients[1].stage is ClientStage.AWAIT_ROUND_START
    h.clients[1].handle(h.outbox[1])
    assert h.clients[1].stage is ClientStage.AWAIT_KEYS


@pytest.mark.parametrize("k", range(5))
@pytest.mark.parametrize("sample", SAMPLES, ids=lambda m: type(m).__name__)
def test_server_drops_senders_of_unexpected_messages(k, sample):
    h = Harness(n=5).steps(k)
    s = h.server
    assert s.stage is SERVER_ORDER[k]
    if type(sample) is SERVER_TRANSITIONS[s.stage][0]:
        real = h.clients[1].handle(h.outbox[1])
        s.receive(1, real)
        assert 1 not in s.offenders and 1 in s._got
        return
    s.receive(1, encode(sample))
    assert 1 in s.offenders and s.stage is SERVER_ORDER[k]


def test_constructor_and_driver_validation():
    import numpy as np
    from securefed.primitives.rng import DeterministicEntropy
    from securefed.secagg import SecAggClient, SecAggConfig, run_secagg_round
    from tests.secagg.helpers import CTX, federation
    ids, roster = federation(4)
    kw = dict(roster=roster, session_context=CTX, round_index=0, entropy=DeterministicEntropy.from_int(0))
    with pytest.raises(ValueError, match="outside Z_2\\^20"):
        SecAggClient(1, identity=ids[1], config=SecAggConfig(ring_bits=20), vector=np.full(3, 1 << 20, np.uint32), **kw)
    with pytest.raises(TypeError, match="dtype"):
        SecAggClient(1, identity=ids[1], config=SecAggConfig(), vector=np.zeros(3, np.int32), **kw)
    with pytest.raises(ValueError, match="does not match the roster"):
        SecAggClient(1, identity=ids[2], config=SecAggConfig(), vector=np.zeros(3, np.uint32), **kw)
    ent = lambda i: DeterministicEntropy.from_int(i)
    with pytest.raises(ValueError, match="same length"):
        run_secagg_round({1: np.zeros(3, np.uint32), 2: np.zeros(4, np.uint32), 3: np.zeros(3, np.uint32)},
                         config=SecAggConfig(), round_index=0, session_context=CTX, identities=ids, roster=roster, entropy_for=ent)
    with pytest.raises(ValueError, match="identities"):
        run_secagg_round({9: np.zeros(3, np.uint32)}, config=SecAggConfig(), round_index=0, session_context=CTX,
                         identities=ids, roster=roster, entropy_for=ent)


def test_streamed_masked_input_equals_receive_path():
    import numpy as np
    from securefed.secagg import decode
    from tests.secagg.helpers import ring_sum
    h = Harness(n=5).steps(2)
    for i, data in h.outbox.items():
        m = decode(h.clients[i].handle(data))
        if i == 1:
            h.server.receive(1, encode(m))
            continue
        for lo in range(0, m.vector.shape[0], 3):  # a transport folding chunks as they arrive
            np.add(h.server.total[lo:lo + 3], m.vector[lo:lo + 3], out=h.server.total[lo:lo + 3])
        h.server.accept_streamed_masked(i)
    with pytest.raises(ValueError, match="not expected"):
        h.server.accept_streamed_masked(2)  # twice
    h.outbox = h.server.close_stage()
    h.steps(2)
    assert np.array_equal(h.server.result, ring_sum(h.inputs, range(1, 6)))
