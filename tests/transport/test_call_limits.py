"""Per-holder call limits (protocols/transport.md §2): one authenticated holder cannot take the coordinator's
thread pool from the others.

The attack this stops (found by an audit): a holder with a valid certificate kept 40 long-poll Fetch calls
open and re-sent each one refused; the server's only limit was global (32 calls), so every other holder's
Join and Fetch got RESOURCE_EXHAUSTED until the coordinator ended the run with 0 of 3 rounds. Here, over real
mutual TLS and the real StageBoard long-poll: a holder's calls past CALLS_PER_HOLDER are refused at once,
another holder is still served, and a cancelled long-poll frees its slot without waiting out its wait_ms.
"""

import time

import grpc
import pytest

from securefed.transport.board import StageBoard
from securefed.transport.frames import Ack, FetchRequest, Kind, decode, encode
from securefed.transport.pki import make_demo_pki
from securefed.transport.service import CALLS_PER_HOLDER, Handlers, make_server, server_workers

from .wire import holder_stub

RUN = b"\x05" * 16


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory):
    lay = make_demo_pki(tmp_path_factory.mktemp("pki") / "fed", holders=2)
    board = StageBoard(RUN, chunk_size=1 << 16)          # no round open: every Fetch long-polls until wait_ms
    handlers = Handlers(join=lambda h, req, ctx: b"{}", fetch=board.fetch,
                        submit=lambda h, it, ctx: encode(Ack(0)), status=lambda: {"ok": True})
    srv, port = make_server(handlers, host="127.0.0.1", port=0, cert=lay.server_cert, key=lay.server_key,
                            ca=lay.ca_cert, roster_ids=frozenset({1, 2}), max_workers=server_workers(2))
    srv.start()
    yield lay, port
    srv.stop(0)


def _poll(stub, wait_ms):
    return stub.fetch(encode(FetchRequest(RUN, 1, 0, wait_ms)), timeout=wait_ms / 1000 + 30)


def _settle(calls, want_done, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end and sum(c.done() for c in calls) < want_done:
        time.sleep(0.05)


def test_a_flooding_holder_gets_its_own_share_and_no_more(coordinator):
    lay, port = coordinator
    flood, ch1 = holder_stub(lay, port, 1)
    calls = [_poll(flood, 60_000) for _ in range(10)]
    _settle(calls, 10 - CALLS_PER_HOLDER)
    refused = [c for c in calls if c.done()]
    held = [c for c in calls if not c.done()]
    assert len(held) == CALLS_PER_HOLDER and len(refused) == 10 - CALLS_PER_HOLDER
    assert {c.code() for c in refused} == {grpc.StatusCode.RESOURCE_EXHAUSTED}
    assert "concurrent calls from this holder" in refused[0].details()
    again = _poll(flood, 60_000)                           # a re-sent call is refused at once as well
    assert again.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    honest, ch2 = holder_stub(lay, port, 2)                      # another holder is served throughout
    assert honest.status(b"", timeout=5)
    frames = [decode(f) for f in _poll(honest, 200)]
    assert frames[0].kind == Kind.WAIT
    assert decode(honest.submit(iter([b"x"]), timeout=5)) == Ack(0)

    t = time.monotonic()
    for c in held:                                         # the flooding holder goes away ...
        c.cancel()
    back = None
    while time.monotonic() - t < 10:                       # ... and its slots come back long before 60 s
        back = _poll(flood, 100)
        try:
            frames = [decode(f) for f in back]
            break
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            time.sleep(0.1)
    assert frames[0].kind == Kind.WAIT and time.monotonic() - t < 10
    ch1.close()
    ch2.close()


def test_a_server_with_too_few_workers_for_its_roster_is_refused(coordinator):
    lay, _ = coordinator
    handlers = Handlers(join=None, fetch=None, submit=None, status=None)
    with pytest.raises(ValueError, match="server_workers"):
        make_server(handlers, host="127.0.0.1", port=0, cert=lay.server_cert, key=lay.server_key, ca=lay.ca_cert,
                    roster_ids=frozenset(range(1, 101)), max_workers=64)
    assert server_workers(100) == 4 * 100 + 16 and server_workers(1) == 32
