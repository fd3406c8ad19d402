"""Frames and streams: round trips, chunk bounds, integrity (length + the trailer's SHA-256), hostile input."""

import hashlib

import pytest
from hypothesis import given, settings, strategies as st

from securefed.transport.frames import (DEFAULT_CHUNK, MAX_CHUNK, MAX_FRAME, VERSION, Ack, Chunk, FetchRequest,
                                        FrameError, Header, Kind, Trailer, decode, encode, iter_stream_frames)
from securefed.transport.stream import BytesSink, StreamReceiver, expect_header

RUN = bytes(range(16))


def _stream(payload: bytes, chunk: int, *, parts=None, digest=None):
    """[HEADER, CHUNK…, TRAILER], decoded; the sender hashes as it sends unless given ``digest``."""
    parts = parts if parts is not None else [payload]
    return [decode(f) for f in iter_stream_frames(RUN, 3, 4, Kind.SECAGG, parts, total_len=len(payload),
                                                  chunk_size=chunk, digest=digest)]


def _receive(frames, cap=1 << 30):
    h = expect_header(frames[0], run_id=RUN, round_index=3, stage=4, kinds=(Kind.SECAGG,), max_len=cap)
    sink = BytesSink(h.total_len)
    rx = StreamReceiver(h, sink)
    for f in frames[1:]:
        rx.feed(f)
    rx.finish()
    return sink.value


@pytest.mark.parametrize("frame", [
    Header(RUN, 7, 2, Kind.MODEL, 123, 4096),
    Chunk(5, 1 << 40, b"abc"),
    Trailer(bytes(range(32))),
    FetchRequest(RUN, 9, 6, 1500),
    Ack(1, "refused"),
])
def test_round_trip(frame):
    assert decode(encode(frame)) == frame


@pytest.mark.parametrize("size,chunk", [(0, 16), (1, 16), (16, 16), (17, 16), (1000, 7), (3 << 20, DEFAULT_CHUNK)])
def test_chunking_reassembles_and_respects_chunk_size(size, chunk):
    payload = bytes((i * 31) % 251 for i in range(size))
    frames = _stream(payload, chunk)
    assert all(len(c.data) <= chunk for c in frames[1:-1])
    assert len(frames) - 2 == -(-size // chunk)          # ceil(size / chunk) chunks between header and trailer
    assert frames[-1] == Trailer(hashlib.sha256(payload).digest())
    assert _receive(frames) == payload


def test_parts_are_recut_into_full_chunks():
    payload = bytes(range(256)) * 10
    parts = [payload[:5], payload[5:700], payload[700:701], payload[701:]]
    frames = _stream(payload, 256, parts=parts)
    assert [len(c.data) for c in frames[1:-1]] == [256] * 10
    assert _receive(frames) == payload


def test_no_frame_near_grpc_limits():
    payload = b"\x00" * (MAX_CHUNK * 2 + 5)
    raw = list(iter_stream_frames(RUN, 0, 0, Kind.MODEL, [payload], total_len=len(payload), chunk_size=MAX_CHUNK))
    assert max(len(f) for f in raw) <= MAX_FRAME < 8 << 20


def test_truncated_stream_rejected():
    frames = _stream(b"x" * 100, 10)
    with pytest.raises(FrameError, match="truncated"):
        _receive(frames[:-2])                        # a chunk and the trailer missing
    with pytest.raises(FrameError, match="truncated"):
        _receive(frames[:-2] + frames[-1:])          # the trailer before the last chunk


def test_stream_without_its_trailer_is_not_committed():
    frames = _stream(b"x" * 100, 10)
    with pytest.raises(FrameError, match="without its trailer"):
        _receive(frames[:-1])


def test_nothing_may_follow_the_trailer():
    frames = _stream(b"x" * 100, 10)
    with pytest.raises(FrameError, match="after the stream's trailer"):
        _receive(frames + frames[-1:])


def test_a_digest_the_sender_holds_is_sent_and_checked_like_any_other():
    """The coordinator sends one θ to every holder with the digest it took once per round; a wrong one is a
    refused stream at the holder (fails closed), a right one gives the same frames as hashing on the fly."""
    payload = bytes(range(256)) * 3
    assert _stream(payload, 100, digest=hashlib.sha256(payload).digest()) == _stream(payload, 100)
    with pytest.raises(FrameError, match="SHA-256"):
        _receive(_stream(payload, 100, digest=hashlib.sha256(b"another").digest()))


def test_tampered_chunk_rejected_by_hash():
    frames = _stream(b"x" * 100, 10)
    frames[3] = Chunk(frames[3].seq, frames[3].offset, b"y" * 10)
    with pytest.raises(FrameError, match="SHA-256"):
        _receive(frames)


def test_overlong_stream_rejected():
    frames = _stream(b"x" * 100, 10)
    frames.insert(-1, Chunk(10, 100, b"z"))          # one byte past total_len, before the trailer
    with pytest.raises(FrameError, match="longer"):
        _receive(frames)


def test_out_of_order_chunk_rejected():
    frames = _stream(b"x" * 100, 10)
    frames[2], frames[3] = frames[3], frames[2]
    with pytest.raises(FrameError, match="out of order"):
        _receive(frames)


def test_oversized_header_rejected_before_any_chunk():
    frames = _stream(b"x" * 100, 10)
    with pytest.raises(FrameError, match="exceeds the cap"):
        _receive(frames, cap=99)


@pytest.mark.parametrize("field,value,msg", [("run_id", b"\x00" * 16, "another run"), ("round", 4, "round 4"),
                                             ("stage", 5, "stage 5"), ("kind", Kind.MODEL, "kind")])
def test_header_for_another_run_round_stage_or_kind_rejected(field, value, msg):
    h = dict(run_id=RUN, round=3, stage=4, kind=Kind.SECAGG, total_len=1)
    h[field] = value
    with pytest.raises(FrameError, match=msg):
        expect_header(Header(**h), run_id=RUN, round_index=3, stage=4, kinds=(Kind.SECAGG,), max_len=10)


@pytest.mark.parametrize("bad", [b"", b"SFTR", b"XXXX\x02\x01", b"SFTR\x02\x01" + b"\x00" * 70, b"SFTR\x02\x09",
                                 encode(Chunk(0, 0, b"ab"))[:-1], encode(Chunk(0, 0, b"ab")) + b"!",
                                 b"SFTR\x02\x02" + b"\x00" * 16, b"SFTR\x02\x04\x00\x00\x05ab",
                                 b"SFTR\x02\x05" + b"\x00" * 31, b"SFTR\x02\x05" + b"\x00" * 33,
                                 b"SFTR\x03\x05" + b"\x00" * 32])
def test_malformed_frames_raise_frame_error(bad):
    with pytest.raises(FrameError):
        decode(bad)


def test_oversized_frame_rejected():
    with pytest.raises(FrameError, match="exceeds"):
        decode(b"SFTR\x01\x02" + b"\x00" * MAX_FRAME)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=200))
def test_fuzz_decode_only_frame_error(data):
    try:
        decode(data)
    except FrameError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 6), st.binary(min_size=1, max_size=60))
def test_fuzz_valid_prefix_garbage_body(ftype, body):
    try:
        decode(b"SFTR" + bytes([VERSION, ftype]) + body)
    except FrameError:
        pass


def test_constructors_validate_fields():
    with pytest.raises(FrameError, match="run_id"):
        Header(b"short", 0, 0, Kind.MODEL, 0)
    with pytest.raises(FrameError, match="digest"):
        Trailer(b"\x00" * 31)
    with pytest.raises(FrameError, match="chunk length"):
        Chunk(0, 0, b"x" * (MAX_CHUNK + 1))
    with pytest.raises(FrameError, match="round"):
        FetchRequest(RUN, -1, 0)
    with pytest.raises(TypeError):
        encode("not a frame")


def test_stage_and_reply_streams_round_trip_and_are_not_interchangeable():
    """A federation stage message travels as Kind.STAGE (coordinator -> holder), its answer as Kind.REPLY;
    a receiver expecting one refuses the other (a holder cannot submit the coordinator's kind of stream)."""
    payload = b"SFFM" + bytes(range(200))
    for kind in (Kind.STAGE, Kind.REPLY):
        frames = [decode(f) for f in iter_stream_frames(RUN, 3, 4, kind, [payload], total_len=len(payload),
                                                         chunk_size=64)]
        h = expect_header(frames[0], run_id=RUN, round_index=3, stage=4, kinds=(kind,), max_len=1 << 20)
        sink = BytesSink(h.total_len)
        rx = StreamReceiver(h, sink)
        for f in frames[1:]:
            rx.feed(f)
        rx.finish()
        assert sink.value == payload
        other = Kind.REPLY if kind == Kind.STAGE else Kind.STAGE
        with pytest.raises(FrameError, match="kind"):
            expect_header(frames[0], run_id=RUN, round_index=3, stage=4, kinds=(other,), max_len=1 << 20)


def _ready(body: bytes) -> bytes:
    from securefed.federation.messages import MAGIC, VERSION, MsgType

    return MAGIC + bytes([VERSION, MsgType.READY]) + body


_GOOD = b'{"round": 2, "holder_id": 3, "tokens": 5, "loss": 1.5, "clipped": true, "record_epsilon": null}'


@pytest.mark.parametrize("bad", [b"[]", b'{"round": 2, "holder_id": 3, "tokens": "many", "loss": 1.5, "clipped": true}',
                                 b'{"round": 2, "holder_id": 3, "tokens": -1, "loss": 1.5, "clipped": true}',
                                 b'{"round": 2, "holder_id": 3, "tokens": true, "loss": 1.5, "clipped": true}',
                                 b'{"round": 2, "holder_id": 3, "tokens": 5, "loss": "NaN", "clipped": true}',
                                 b'{"round": 2, "holder_id": 3, "tokens": 5, "loss": NaN, "clipped": true}',
                                 b'{"round": 2, "holder_id": 3, "tokens": 5, "loss": 1e999, "clipped": true}',
                                 b'{"round": 0, "holder_id": 3, "tokens": 5, "loss": 1.5, "clipped": true}',
                                 b'{"round": 2, "holder_id": 3, "tokens": 5, "loss": 1.5}',
                                 b"\xff\xfe", b"{" * 5000])
def test_round_report_validation(bad):
    """The holder's round report (the typed Ready message, protocols/federation.md §3): every malformed body is
    one MessageError, never a KeyError/TypeError/RecursionError from a hostile holder's bytes."""
    from securefed.federation.messages import MessageError, decode as decode_message

    with pytest.raises(MessageError):
        decode_message(_ready(bad))


def test_round_report_refuses_unknown_fields():
    """A round report carries only tokens, loss, clipped and record-level ε (no data, no free-form fields):
    a body with any other field is refused whole, not trimmed."""
    from securefed.federation.messages import MessageError, Ready, decode as decode_message, encode as encode_message

    assert decode_message(_ready(_GOOD)) == Ready(2, 3, 5, 1.5, True, None)
    with pytest.raises(MessageError, match="unknown or missing"):
        decode_message(_ready(_GOOD[:-1] + b', "extra": "x"}'))
    with pytest.raises(MessageError, match="unknown or missing"):
        decode_message(_ready(_GOOD[:-1] + b', "norm": 0.5}'))
    r = Ready(2, 3, 5, None, None)             # distributed DP: the server must not learn whether Δ was clipped
    assert decode_message(encode_message(r)) == r


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_fuzz_json_documents_only_value_error(data):
    from securefed.transport.service import parse_json

    try:
        assert isinstance(parse_json(data, "doc"), dict)
    except ValueError:
        pass


@given(st.lists(st.binary(max_size=40), max_size=6), st.integers(0, 1), st.integers(0, 2))
def test_bytes_sink_reassembles_any_cut_and_enforces_offsets_and_cap(pieces, kind, slack):
    """Whole payloads are kept without copying (in-process replies), several pieces are joined; either
    way the value is exactly the bytes written, and a wrong offset or an overlong payload is refused."""
    payload = b"".join(pieces)
    sink = BytesSink(len(payload) + slack)
    off = 0
    for p in pieces:
        sink.write(off, p if kind else bytearray(p))
        off += len(p)
    with pytest.raises(FrameError):
        sink.write(off + 1, b"x")                      # a gap
    with pytest.raises(FrameError):
        sink.write(off, b"x" * (slack + 1))            # past the cap
    sink.commit()
    assert sink.value == payload and type(sink.value) is bytes
    if kind and len(pieces) == 1:
        assert sink.value is pieces[0]                 # the one piece, not a copy
    sink.abort()
    sink.write(0, b"")                                 # reusable after abort


def test_holders_fetching_one_model_at_once_hash_it_once(monkeypatch):
    """The coordinator's θ goes to every holder; concurrent fetches share one SHA-256 of it (they each
    hashed it, 3× the work at 125m × 3 holders), and every holder still gets the same, verifiable frames."""
    import threading
    import time

    from securefed.transport import board as board_mod
    from securefed.transport.frames import Kind

    calls, real = [], board_mod.sha256_parts

    def counting(parts):
        calls.append(1)
        time.sleep(0.2)                             # a hash long enough for every fetch to arrive meanwhile
        return real(parts)
    monkeypatch.setattr(board_mod, "sha256_parts", counting)
    b = board_mod.StageBoard(b"r" * 16, chunk_size=1 << 20)
    theta = bytes(range(256)) * (3 << 12)          # 3 MiB: over the size that is cached
    got, start = [], threading.Barrier(3)

    def fetch():
        start.wait()
        got.append(b"".join(list(b._frames(1, 2, Kind.STAGE, theta))))
    threads = [threading.Thread(target=fetch) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and len(got) == 3 and got[0] == got[1] == got[2]
    small = [decode(f) for f in b._frames(1, 3, Kind.STAGE, b"small")]
    assert len(calls) == 1                           # small payloads are hashed as they stream, into the trailer
    assert small[-1].digest == hashlib.sha256(b"small").digest()


def test_a_version_1_peer_is_refused_by_name():
    """Version 2 moved the digest from the header to a trailer: a version-1 frame (an old coordinator or holder)
    is one clear error naming the version, not a misparsed header."""
    with pytest.raises(FrameError, match="unsupported frame version 1"):
        decode(b"SFTR\x01\x01" + b"\x00" * 66)


def test_buffer_sink_hands_over_its_one_buffer_and_refuses_overflow():
    """A holder's θ goes into one buffer sized from the header (BufferSink): the stream's bytes exactly, as a
    writable bytearray (read in place by the holder, no copy into bytes), and nothing beyond its size."""
    from securefed.transport.stream import BufferSink

    payload = bytes(range(256)) * 40
    frames = _stream(payload, 1000)
    sink = BufferSink(len(payload))
    rx = StreamReceiver(frames[0], sink)
    for f in frames[1:]:
        rx.feed(f)
    rx.finish()
    assert type(sink.value) is bytearray and sink.value == payload
    small = BufferSink(len(payload) - 1)
    rx = StreamReceiver(frames[0], small)
    with pytest.raises(FrameError, match="buffer"):
        for f in frames[1:]:
            rx.feed(f)
    assert small.value is None                       # aborted: nothing handed over


def _fetched(board, hid: int, r: int, wait_ms: int) -> tuple:
    """One fetch through the board as the RPC handler runs it: (kind, JSON payload)."""
    import json

    frames = [decode(f) for f in board.fetch(hid, encode(FetchRequest(board.run_id, r, 0, wait_ms)), None)]
    sink = BytesSink(frames[0].total_len)
    rx = StreamReceiver(frames[0], sink)
    for f in frames[1:]:
        rx.feed(f)
    rx.finish()
    return frames[0].kind, json.loads(sink.value)


def test_the_run_end_reaches_holders_polling_now_and_asking_later():
    """transport.md §5.4: end_run answers a fetch long-polling at that moment (at once, not after its wait)
    and every later one with WAIT `ended` (why, after_round); wait_told names the live holders not yet told."""
    import threading
    import time

    from securefed.transport.board import StageBoard
    from securefed.transport.frames import Kind

    b = StageBoard(b"r" * 16, chunk_size=1 << 20)
    got = []
    poll = threading.Thread(target=lambda: got.append((_fetched(b, 1, 3, 60_000), time.monotonic())))
    poll.start()
    while 1 not in b.waiting:
        time.sleep(0.01)
    assert _fetched(b, 2, 3, 1)[1]["reason"] == "not_open"      # holder 2 asked once: alive, before the end
    t0 = time.monotonic()
    b.end_run("too_few", 2)
    poll.join(10)
    (kind, info), t1 = got[0]
    assert kind == Kind.WAIT and info == {"reason": "ended", "why": "too_few", "after_round": 2} and t1 - t0 < 5
    assert b.wait_told(fresh=45, timeout=0.2) == [2]           # holder 2 has not asked since
    assert _fetched(b, 2, 3, 60_000)[1]["reason"] == "ended"   # a later fetch: answered at once
    assert b.wait_told(fresh=45, timeout=0.2) == [] and b.status()["ended"]["why"] == "too_few"
    assert b.status()["waiting"] == []    # the run ended: no holder is listed as waiting for a round


def test_the_first_round_waits_while_holders_keep_arriving_and_not_for_one_that_never_comes():
    """transport.md §5.3: the first round's join deadline restarts at each holder asking for the first time.
    Holders asking 0.6 s apart all make the cohort with a 1 s deadline (a fixed 1 s wait from the start would
    miss the last two); the fourth never comes, and the wait ends 1 s after the third arrived."""
    import threading
    import time

    from securefed.transport.board import StageBoard

    b = StageBoard(b"r" * 16, chunk_size=1 << 20)
    t0 = time.monotonic()

    def arrive():
        for hid in (1, 2, 3):
            time.sleep(0.6)
            _fetched(b, hid, 1, 1)
    t = threading.Thread(target=arrive, daemon=True)
    t.start()
    got = b.wait_for_holders(1, want=4, timeout=1.0)
    took = time.monotonic() - t0
    t.join(5)
    assert got == [1, 2, 3] and 1.8 + 1.0 - 0.1 < took < 1.8 + 1.0 + 1.5
    # later rounds keep the fixed deadline: holder 3 alive but not asking for round 2 is waited for 0.5 s
    b.open_round(1, got)
    t1 = time.monotonic()
    _fetched(b, 1, 2, 1)
    assert b.wait_for_holders(2, want=4, timeout=0.5) == [1] and time.monotonic() - t1 < 0.5 + 1.2


def test_a_later_round_stops_waiting_for_a_dead_holder_when_its_window_ends_and_long_polls_count_as_alive():
    """transport.md §5.3: a later round waits for every holder alive — a fetch of its open now, or an ask in the last
    `alive_s`. Found by a reviewer of the suite's timings: nothing woke the wait when a dead holder's window ran out,
    so the round stayed shut until some other fetch arrived (up to a 30 s long poll), and by then the holders
    long-polling since before the window looked stale too — the round opened with a subset, or none."""
    import threading
    import time

    from securefed.transport.board import StageBoard

    b = StageBoard(b"r" * 16, chunk_size=1 << 20)
    b.open_round(1, [1, 2, 3])
    b.end_round(1)
    polls = [threading.Thread(target=_fetched, args=(b, h, 2, 60_000), daemon=True) for h in (2, 3)]
    for t in polls:
        t.start()
    while len(b.waiting) < 2:
        time.sleep(0.01)
    time.sleep(1.3)                      # holders 2 and 3 asked longer ago than the window: alive, long-polling
    _fetched(b, 1, 1, 1)                 # holder 1 asks once about round 1, then dies
    t0 = time.monotonic()
    got = b.wait_for_holders(2, want=3, timeout=20.0, fresh=1.0)
    took = time.monotonic() - t0
    assert got == [2, 3] and 0.8 < took < 3.0, (got, took)
    b.end_run("finished", 1)
    for t in polls:
        t.join(10)
    assert not b.polling                 # every call that ended left the count


def test_the_waits_say_who_asked_and_how_many_replied():
    """What the coordinator's progress shows while it waits (GrpcChannel): the holders asking for the round, at
    the start and as each one asks, the final set included; then the replies settled as each one arrives.
    A wait that shows nothing looks, on a hospital's server console, exactly like one that is stuck."""
    import threading
    import time

    from securefed.transport.board import StageBoard

    b = StageBoard(b"r" * 16, chunk_size=1 << 20)

    def arrive():
        for hid in (3, 1):
            time.sleep(0.3)
            _fetched(b, hid, 1, 1)
    t = threading.Thread(target=arrive, daemon=True)
    t.start()
    asked = []
    assert b.wait_for_holders(1, want=2, timeout=5.0, on_change=asked.append) == [1, 3]
    assert asked == [[], [3], [1, 3]]
    t.join(5)      # holder 1's fetch has returned: opening the round now cannot hand it the stage's payload
    b.open_round(1, [1, 3])
    b.publish(2, {1: b"x", 3: b"x"}, reply=True, max_reply=64)

    def reply():
        for hid in (3, 1):
            time.sleep(0.3)
            frames = list(iter_stream_frames(b.run_id, 1, 2, Kind.REPLY, [b"ok"], total_len=2, digest=None,
                                             chunk_size=1 << 20))
            assert decode(b.submit(hid, iter(frames), None)).status == 0
    threading.Thread(target=reply, daemon=True).start()
    settled = []
    replies, done = b.wait_replies(5.0, on_progress=settled.append)
    assert settled == [1, 2] and done == {1, 3} and replies == {1: b"ok", 3: b"ok"}


def test_server_status_shows_who_is_asking_while_the_coordinator_waits(tmp_path):
    """`securefed server --status RUN_DIR` reads RUN_DIR/status.json: while the first round waits for its
    holders, the file names those asking as each one asks (it was written only when a round opened or
    ended, so a waiting server showed an empty list however many holders were already there)."""
    import json
    import threading
    import time

    from securefed.federation.grpc import GrpcChannel
    from securefed.federation.stages import Stage
    from securefed.secagg import Roster
    from securefed.transport.board import StageBoard
    from securefed.transport.pki import make_demo_pki

    lay = make_demo_pki(tmp_path / "pki", holders=3)
    ch = GrpcChannel(pki=lay.root, roster=Roster.load(lay.roster), status_path=tmp_path / "status.json")
    ch.board = StageBoard(b"r" * 16, chunk_size=1 << 20)
    seen = []

    def arrive_then_look():
        time.sleep(0.3)
        _fetched(ch.board, 2, 1, 1)
        time.sleep(0.3)                      # the coordinator is still waiting (want 3, 2 s without news)
        seen.append(json.loads((tmp_path / "status.json").read_text()))
    t = threading.Thread(target=arrive_then_look, daemon=True)
    t.start()
    assert ch.available(1, want=3, timeout=2.0) == [2]
    t.join(5)
    assert seen and seen[0]["board"]["waiting"] == [2] and seen[0]["waiting_for_round"] == 1
    assert seen[0]["asking"] == [2]
    # what `simulate --backend grpc` prints from that file while it waits (launch.board_line)
    from securefed.federation.launch import board_line

    assert board_line(seen[0]) == "round 1: waiting for holders (asking: 2)"
    ch.board.open_round(1, [1, 2])
    ch.board.publish(int(Stage.PLAN), {1: b"x", 2: b"x"}, reply=True, max_reply=64)
    ch.board.done.add(2)
    assert board_line(ch.status()) == "round 1: local training, replies 1/2 (in: 2)"
    assert ch.status()["board"]["stage_name"] == "local training"   # status.json names the stage, not only its number
    assert board_line({"board": {"ended": {"why": "finished"}}}) is None and board_line({"board": "junk"}) is None


def test_a_second_reply_to_a_committed_stage_is_answered_already_replied_even_after_the_stage_moved_on():
    """transport.md §4/§6.3: once holder 1's reply to a stage of this round is committed, another stream for that stage
    under holder 1's certificate gets ACK status 2 (already replied), during the stage and after the next one opened
    — a client that never sent that reply learns that another client holds its identity. Other refusals stay 1."""
    from securefed.transport.board import StageBoard
    from securefed.transport.frames import ACK_ALREADY_REPLIED, ACK_TOO_LATE

    b = StageBoard(b"r" * 16, chunk_size=1 << 20)

    def submit(hid, stage, body=b"ok"):
        frames = list(iter_stream_frames(b.run_id, 1, stage, Kind.REPLY, [body], total_len=len(body), digest=None,
                                         chunk_size=1 << 20))
        return decode(b.submit(hid, iter(frames), None))
    b.open_round(1, [1, 2])
    b.publish(2, {1: b"x", 2: b"x"}, reply=True, max_reply=64)
    assert submit(1, 2).status == 0
    assert submit(1, 2).status == ACK_ALREADY_REPLIED                 # the same stage, still open
    b.publish(3, {1: b"x", 2: b"x"}, reply=True, max_reply=64)
    assert submit(1, 2).status == ACK_ALREADY_REPLIED                 # that stage closed; its reply was committed
    assert submit(2, 2).status == ACK_TOO_LATE                        # holder 2 never replied to it: a late reply
    assert 2 not in b.failed                                          # (which costs it nothing in stage 3)
    assert submit(1, 3).status == 0 and b.replies == {1: b"ok"}
    b.open_round(2, [1, 2])                                            # a new round: nothing committed yet
    b.publish(2, {1: b"x", 2: b"x"}, reply=True, max_reply=64)
    frames = list(iter_stream_frames(b.run_id, 2, 2, Kind.REPLY, [b"ok"], total_len=2, digest=None, chunk_size=1 << 20))
    assert decode(b.submit(1, iter(frames), None)).status == 0


def test_a_reply_after_its_stage_ended_is_answered_too_late_and_only_to_the_holders_it_waited_for():
    """transport.md §6.1: a reply that reaches the coordinator after its stage closed was answered ACK status 1, the
    generic "refused", like garbage — a holder always too slow for a deadline (or a twin that always answers
    second) took part round after round contributing nothing, and could not tell why. Now: status 3 (too late) for
    a holder the stage waited for in vain, in this round or the last one; still 1 for a stage or round that never
    addressed it, and nothing is committed."""
    from securefed.transport.board import StageBoard
    from securefed.transport.frames import ACK_TOO_LATE

    b = StageBoard(b"r" * 16, chunk_size=1 << 20)

    def submit(hid, r, stage, body=b"ok"):
        frames = list(iter_stream_frames(b.run_id, r, stage, Kind.REPLY, [body], total_len=len(body), digest=None,
                                         chunk_size=1 << 20))
        return decode(b.submit(hid, iter(frames), None)).status
    b.open_round(1, [1, 2, 3])
    b.publish(0, {1: b"x", 2: b"x"}, reply=True, max_reply=64)   # holder 3 is not addressed in stage 0
    assert submit(1, 1, 0) == 0
    replies, done = b.wait_replies(0.05)                          # the deadline passes without holder 2
    assert done == {1}
    assert submit(2, 1, 0) == ACK_TOO_LATE                        # the stage is closed and none is open
    b.publish(4, {1: b"x"}, reply=True, max_reply=64)
    assert submit(2, 1, 0) == ACK_TOO_LATE                        # another stage is open now
    assert submit(3, 1, 0) == 1                                   # never asked for a reply to stage 0
    assert submit(2, 1, 4) == 1                                   # not addressed in the open stage
    assert b.wait_replies(0.05) == ({}, set())                    # stage 4 closes without holder 1
    b.end_round(1)
    b.open_round(2, [1, 2, 3])
    assert submit(2, 1, 0) == ACK_TOO_LATE and submit(1, 1, 4) == ACK_TOO_LATE   # the last round's stages
    assert submit(1, 1, 0) == 1                                   # committed in time: not late (another round now)
    b.publish(0, {1: b"x", 2: b"x", 3: b"x"}, reply=True, max_reply=64)
    assert b.wait_replies(0.05) == ({}, set())
    b.end_round(2)
    b.open_round(3, [1, 2, 3])
    assert submit(2, 1, 0) == 1                                   # two rounds back: forgotten, generic refusal
    assert submit(3, 2, 0) == ACK_TOO_LATE
    assert b.replies == {} and b.committed == set()


def test_a_reply_stream_still_open_when_its_stage_closes_is_answered_too_late_at_once_and_undone():
    """transport.md §6.1: a reply stream still open at the stage's deadline was cancelled (the holder saw gRPC
    CANCELLED and reconnected as after a network failure, never told why). Now its handler, waiting for the next
    frame of a stalled sender, is woken when the stage closes: the sink is undone and the answer is ACK status 3 at
    once — while the sender still holds its stream open — and nothing of it is committed or kept."""
    import threading
    import time

    from securefed.transport.board import StageBoard
    from securefed.transport.frames import ACK_TOO_LATE

    b = StageBoard(b"r" * 16, chunk_size=1 << 20)
    aborted, resume = [], threading.Event()

    class Sink(BytesSink):
        def abort(self):
            aborted.append(len(self._buf) + len(self._whole or b""))
            super().abort()

    body = b"x" * 100
    frames = list(iter_stream_frames(b.run_id, 1, 2, Kind.REPLY, [body], total_len=100, digest=None, chunk_size=40))

    def stalled():                    # header and the first chunk, then nothing until the test lets go
        yield from frames[:2]
        resume.wait(30)
        yield from frames[2:]
    b.open_round(1, [1, 2])
    b.publish(2, {1: b"x", 2: b"x"}, reply=True, sink=lambda h: Sink(1 << 10), max_reply=1 << 10)
    out = {}
    t = threading.Thread(target=lambda: out.setdefault("ack", decode(b.submit(1, stalled(), None))), daemon=True)
    t.start()
    t0 = time.monotonic()
    while 1 not in b.streaming and time.monotonic() - t0 < 10:
        time.sleep(0.01)
    assert 1 in b.streaming
    assert b.wait_replies(0.2) == ({}, set())          # the deadline passes: holder 1's stream is still open
    t.join(5)
    assert not t.is_alive() and not resume.is_set(), "the answer waited for the stalled sender"
    assert out["ack"].status == ACK_TOO_LATE
    assert aborted == [40] and b.streaming == {} and b.done == set() and b.committed == set()
    resume.set()


def test_a_reply_whose_stage_closes_after_its_last_frame_but_before_it_ended_is_never_committed():
    """transport.md §6.1: the stage closes after the sender's trailer was read but before its stream ended. The board
    committed the sink (a masked input's fold: into the sum) and then answered 3, "too late": the holder was told it
    contributed nothing while its input was used. The commit now takes the lock that closes stages, after checking
    the stage is still open: a reply answered 3 is never committed."""
    import threading

    from securefed.transport.board import StageBoard
    from securefed.transport.frames import ACK_TOO_LATE

    b = StageBoard(b"r" * 16, chunk_size=1 << 20)
    committed, closed = [], threading.Event()

    class Sink(BytesSink):
        def commit(self):
            committed.append(True)
            super().commit()

    frames = list(iter_stream_frames(b.run_id, 1, 2, Kind.REPLY, [b"ok"], total_len=2, digest=None, chunk_size=40))

    def trailer_after_close():       # the close wins the race for the lock: the board must not commit
        yield from frames
        b.wait_replies(0.0)
        closed.set()
    b.open_round(1, [1])
    b.publish(2, {1: b"x"}, reply=True, sink=lambda h: Sink(64), max_reply=64)
    assert decode(b.submit(1, trailer_after_close(), None)).status == ACK_TOO_LATE
    assert closed.is_set() and committed == [] and b.committed == set()


def test_a_refused_reply_stream_leaves_no_reader_thread_behind():
    """A stream refused mid-way (a chunk out of order) stopped being read by its handler while its reader thread
    held the next frame, waiting for a handler that had returned: one thread and one frame per refused stream, kept
    for good. Every way out of the handler stops its reader."""
    import threading
    import time

    from securefed.transport.board import StageBoard

    b = StageBoard(b"r" * 16, chunk_size=1 << 20)
    frames = list(iter_stream_frames(b.run_id, 1, 2, Kind.REPLY, [b"x" * 200], total_len=200, digest=None,
                                     chunk_size=40))
    b.open_round(1, [1])
    b.publish(2, {1: b"x"}, reply=True, max_reply=1 << 10)
    assert decode(b.submit(1, iter([frames[0], frames[2], *frames[1:]]), None)).status == 1
    t0 = time.monotonic()
    while any(t.name == "frame-reader" for t in threading.enumerate()) and time.monotonic() - t0 < 5:
        time.sleep(0.01)
    assert not [t for t in threading.enumerate() if t.name == "frame-reader"]
    assert b.streaming == {} and b.failed == {1}


def test_a_masked_input_streaming_when_its_stage_closes_is_answered_too_late_not_refused(tmp_path):
    """transport.md §6.1: a reply stream still open when its stage closes is answered status 3. The driver seals the
    ring sum right after the close (aggregation.SecureSession.finish: collect, then acc.seal()), which undoes the open
    fold; a handler that had taken its next chunk from the reader before the close then wrote it into the undone fold,
    got "masked stream already closed" and answered status 1, a bare refusal (in a measured race, 38 of 60 streams
    closed mid-way): the holder logged "reply refused", not that it contributed nothing to the round. Likewise a handler
    that opened its fold only after the seal. Whatever fails once the stream's stage has ended is answered 3."""
    import threading

    import numpy as np

    from securefed.transport.accumulate import RingAccumulator, masked_prefix
    from securefed.transport.board import StageBoard
    from securefed.transport.frames import ACK_TOO_LATE

    P = 1000
    payload = masked_prefix(1, 32, P) + np.arange(P, dtype="<u4").tobytes()
    for when in ("chunk in hand", "fold opened after the seal"):
        b = StageBoard(b"r" * 16, chunk_size=1 << 20)
        acc = RingAccumulator(P, 32, tmp_path / when.replace(" ", "-"))
        in_hand, go = threading.Event(), threading.Event()

        class Sink:                   # the fold, reached by the handler only once the stage has closed and been sealed
            def __init__(self, h):
                if when == "fold opened after the seal":
                    in_hand.set()
                    go.wait(10)
                self.fold = acc.open(h)

            def write(self, offset, data):
                if offset and not go.is_set():
                    in_hand.set()
                    go.wait(10)
                self.fold.write(offset, data)

            def commit(self):
                self.fold.commit()

            def abort(self):
                self.fold.abort()

        frames = list(iter_stream_frames(b.run_id, 1, 2, Kind.REPLY, [payload], total_len=len(payload),
                                         chunk_size=1000))
        b.open_round(1, [1])
        b.publish(2, {1: b"x"}, reply=True, sink=Sink, max_reply=len(payload))
        out = {}
        t = threading.Thread(target=lambda: out.setdefault("ack", decode(b.submit(1, iter(frames), None))),
                             daemon=True)
        t.start()
        assert in_hand.wait(10)
        assert b.wait_replies(0.0) == ({}, set())      # the deadline passes with the stream open ...
        acc.seal()                                     # ... and the driver seals the sum at once
        go.set()
        t.join(10)
        assert out["ack"].status == ACK_TOO_LATE, (when, out["ack"])
        assert not acc.total.any() and acc.committed == set() and b.streaming == {} and b.failed == set()


def test_an_incomplete_masked_input_is_undone_outside_the_boards_lock(tmp_path, monkeypatch):
    """726e496 moved a stream's commit under the board's lock (§6.1); a commit that fails undoes the fold right there,
    reading back a journal of up to 4·P bytes (measured: 0.13 s per 400 MB, 0.5 s per 1.6 GB with every fetch, submit
    and the stage's close waiting on the lock). Any holder could make it fail: send every byte but no trailer, or a
    header one word short of the model with a valid trailer. The board now refuses an incomplete stream before it
    takes the lock, and its undo runs with the lock free."""
    import threading

    import numpy as np

    from securefed.transport import accumulate
    from securefed.transport.accumulate import RingAccumulator, masked_prefix
    from securefed.transport.board import StageBoard

    P = 1000
    whole = masked_prefix(1, 32, P) + np.arange(1, P + 1, dtype="<u4").tobytes()
    held, real_abort = [], accumulate.MaskedFold.abort

    def abort(self):
        got = []
        t = threading.Thread(target=lambda: got.append(b.cond.acquire(timeout=2) and (b.cond.release() or True)))
        t.start()
        t.join()
        held.append(not got[0])
        real_abort(self)
    monkeypatch.setattr(accumulate.MaskedFold, "abort", abort)
    for case in ("no trailer", "one word short"):
        b = StageBoard(b"r" * 16, chunk_size=1 << 20)
        acc = RingAccumulator(P, 32, tmp_path / case.replace(" ", "-"))
        payload = whole[:-4] if case == "one word short" else whole
        frames = list(iter_stream_frames(b.run_id, 1, 2, Kind.REPLY, [payload], total_len=len(payload),
                                         chunk_size=1000))
        if case == "no trailer":
            frames = frames[:-1]
        b.open_round(1, [1])
        b.publish(2, {1: b"x"}, reply=True, sink=acc.open, max_reply=len(whole))
        assert decode(b.submit(1, iter(frames), None)).status == 1, case
        assert not acc.total.any() and acc.committed == set() and b.failed == {1}, case
    assert held and not any(held), held


def test_a_submit_that_never_sends_its_header_is_answered_and_ends(monkeypatch):
    """transport.md §6.1: a Submit stream whose header never comes (a client that opens streams and sends nothing)
    held its handler inside gRPC's request iterator until the client left. It is now refused after the header
    timeout, its reader stopped; a stream that is merely empty is refused at once, as before."""
    import threading
    import time

    from securefed.transport import board as board_mod
    from securefed.transport.board import StageBoard

    monkeypatch.setattr(board_mod, "HEADER_TIMEOUT_S", 0.3)
    b = StageBoard(b"r" * 16, chunk_size=1 << 20)
    b.open_round(1, [1])
    b.publish(2, {1: b"x"}, reply=True, max_reply=1 << 10)
    gone = threading.Event()

    def silent():
        gone.wait(30)   # sends nothing until the test ends
        return
        yield b""

    t0 = time.monotonic()
    assert decode(b.submit(1, silent(), None)).status == 1
    assert time.monotonic() - t0 < 5 and b.streaming == {}
    gone.set()
    assert decode(b.submit(1, iter([]), None)).status == 1
    frames = list(iter_stream_frames(b.run_id, 1, 2, Kind.REPLY, [b"x" * 200], total_len=200, digest=None,
                                     chunk_size=40))
    assert decode(b.submit(1, iter(frames), None)).status == 0      # a holder that sends at once is unaffected
