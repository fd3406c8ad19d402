"""What one holder's calls make the coordinator log is rate-limited per holder (protocols/transport.md §2,
threat_models/transport.md TR-18).

Found by the wire review of a malicious holder (stop 50): holder 4 of a deployed `securefed server` made 5,207 Joins
in 10 s over its own mTLS connection and the coordinator logged every one ("holder 4 joined (ipv4:…)", 66 KB/s,
5.7 GB a day from one holder); each refused Submit or Fetch was one warning line as well. Here over real mutual TLS,
the real GrpcChannel's Join and the real StageBoard's Submit: a flooding holder's lines stop at ratelog.PER_MINUTE,
another holder's are still logged, and the next minute says how many were left out.
"""

import logging

from securefed.federation.grpc import GrpcChannel
from securefed.federation.messages import Hello, encode
from securefed.secagg import Roster
from securefed.transport.pki import make_demo_pki
from securefed.transport.ratelog import PER_MINUTE, HolderLog

from .wire import holder_stub

RUN = b"\x06" * 16


def test_a_holder_flooding_joins_and_refused_streams_cannot_flood_the_coordinators_log(tmp_path, caplog):
    lay = make_demo_pki(tmp_path / "pki", holders=2)
    channel = GrpcChannel(pki=lay.root, roster=Roster.load(lay.roster), port=0)
    channel.open(welcome_for=lambda h: b"{}", run_id=RUN)
    caplog.set_level(logging.INFO, logger="securefed")
    try:
        flood, ch1 = holder_stub(lay, channel.port, 1)
        for _ in range(3 * PER_MINUTE):
            assert flood.join(encode(Hello(1)), timeout=10) == b"{}"
            assert flood.submit(iter([b"GARBAGE"]), timeout=10)        # refused: an ACK, one warning line each
        honest, ch2 = holder_stub(lay, channel.port, 2)
        assert honest.join(encode(Hello(2)), timeout=10) == b"{}"
        ch1.close(), ch2.close()
    finally:
        channel.close()
    lines = [r.getMessage() for r in caplog.records]
    mine = [m for m in lines if m.startswith("holder 1")]
    assert len(mine) == PER_MINUTE, len(mine)                  # 6·PER_MINUTE calls, PER_MINUTE lines
    assert any(m.startswith("holder 1 joined") for m in mine) and any("refused a stream" in m for m in mine)
    assert sum(m.startswith("holder 2 joined") for m in lines) == 1      # another holder's line is not held back


def test_the_next_minute_says_how_many_lines_were_left_out(caplog):
    now = [100.0]
    say = HolderLog(logging.getLogger("securefed.test"), per_minute=2, clock=lambda: now[0]).say
    caplog.set_level(logging.INFO, logger="securefed")
    for i in range(5):
        say(7, logging.INFO, "holder %d: call %d", 7, i)
    say(None, logging.WARNING, "refused a call from %s", "ipv4:x")
    now[0] += 61.0
    say(7, logging.INFO, "holder %d: call %d", 7, 5)
    assert [r.getMessage() for r in caplog.records] == [
        "holder 7: call 0", "holder 7: call 1", "refused a call from ipv4:x",
        "holder 7: 3 more lines about its calls were left out of this log in its last minute (at most 2 a minute, "
        "transport.md §2)", "holder 7: call 5"]
