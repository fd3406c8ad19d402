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
