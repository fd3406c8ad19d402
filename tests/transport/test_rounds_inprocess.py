"""Whole networked rounds in one process: the real Coordinator over the real GrpcChannel, holders through
``federation.grpc.run_holder`` in threads — gRPC + mutual TLS on 127.0.0.1, the tiny LM (tests/transport/netfed.py).

Each round's model equals θ_r minus the mean of the survivors' clipped updates within the quantization bound;
hostile input from an authenticated holder (garbage frames, an empty stream, a Hello naming another holder, a
fetch for another run, streams for a stage or round not open, the wrong kind of stream, an oversized header) is
refused while the server keeps serving — before a round opens it costs the holder nothing; an oversized stream for
its own open stage drops it from that stage (S6) and the round completes without it; a masked upload cut
mid-stream is undone and the round completes without that holder; central DP over the network is noised and
accounted."""


import threading

import grpc
import numpy as np
import pytest

from securefed.federation.grpc import EXIT, GrpcChannel
from securefed.federation.messages import Hello
from securefed.federation.messages import encode as encode_message
from securefed.federation.stages import Stage
from securefed.privacy.ledger import read_ledger
from securefed.transport import accumulate
from securefed.transport.client import Refused, TransportClient
from securefed.transport.frames import FetchRequest, Header, Kind, decode, encode, iter_stream_frames
from securefed.transport.pki import make_demo_pki
from securefed.transport.service import load_client_credentials

from .netfed import NetFederation

N = 4


@pytest.fixture
def net(tiny_run):
    # clip 1.0: every holder's Δ (norm ~ 8 after K = 2 AdamW steps) is clipped; network.control is generous
    # because a hook below holds one holder inside a stage while it plays the attacker
    return tiny_run + ["privacy.clip=1.0", "network.control=60"]


def _hostile(fed: NetFederation) -> None:
    """Holder 1's own (valid) certificate, before any round is open: every malformed call is refused."""
    c = TransportClient(fed.target, fed.creds(1))
    with pytest.raises(grpc.RpcError) as e:             # the id comes from the certificate: a Hello naming 2 is refused
        c.join(encode_message(Hello(2)), timeout=20)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    c.set_run(fed.coord.run_id)
    s = int(Stage.OFFER)
    assert decode(c.stub.submit(iter([b"garbage", b"\x00" * 10]), timeout=10)).status == 1
    assert decode(c.stub.submit(iter([]), timeout=10)).status == 1
    other = c.stub.fetch(encode(FetchRequest(b"\x07" * 16, 1, 0, 100)), timeout=10)
    assert decode(next(iter(other))).kind == Kind.WAIT
    with pytest.raises(Refused):                        # a stage that is not open
        c.submit(1, Stage.SECAGG_MASKED, Kind.REPLY, b"SFSA\x01\x05not a message", timeout=10)
    with pytest.raises(Refused):                        # a round that is not open
        c.submit(2, s, Kind.REPLY, b"SFFM\x01\x04{}", timeout=10)
    with pytest.raises(Refused):                        # the coordinator's kind of stream
        c.submit(1, s, Kind.STAGE, b"SFFM", timeout=10)
    huge = Header(fed.coord.run_id, 1, s, Kind.REPLY, 1 << 40)
    assert decode(c.stub.submit(iter([encode(huge)]), timeout=10)).status == 1
    assert c.status(timeout=10)["board"]["round"] == 0          # still serving
    c.close()


def _oversized_reply(fed: NetFederation, r: int, stage: int) -> None:
    """Holder 1's certificate, while its own reply to ``stage`` is due: a header announcing 1 TiB is refused
    before any chunk (the stage's reply cap) and the server keeps serving."""
    c = TransportClient(fed.target, fed.creds(1))
    c.set_run(fed.coord.run_id)
    assert c.status(timeout=10)["board"]["stage"] == stage
    huge = Header(fed.coord.run_id, r, stage, Kind.REPLY, 1 << 40)
    assert decode(c.stub.submit(iter([encode(huge)]), timeout=10)).status == 1
    assert c.status(timeout=10)["board"]["round"] == r
    c.close()


def test_network_rounds_equal_mean_of_clipped_updates_and_survive_garbage(tmp_path, net):
    """Round 1: all four holders; θ₂ = θ₁ − Σ clip(Δ_i)/4. Round 2: holder 1 sends an oversized stream for its
    own SECAGG_START reply — refused, and (protocols/secagg.md S6: a failed stream drops its sender for the
    stage) holder 1 is out of round 2's masked sum: θ₃ = θ₂ − Σ_{2,3,4} clip(Δ_i)/3, and it released nothing.
    The server's console (a log file, heartbeat shortened) says what the coordinator waits for and how many
    holders answered — not a bare "still working" (what `securefed server` printed before)."""
    import io
    import re

    from securefed.runtime.progress import Progress

    console = io.StringIO()
    progress = Progress(enabled=True, stream=console, interactive=False, heartbeat_s=0.05, min_interval_s=0.05,
                        tick_s=0.02)
    fed = NetFederation.build(tmp_path, net, progress=progress)
    seen, theta_types = {}, set()
    handle = fed.holders[1].handle

    def hostile_then_honest(r, stage, payload):
        if stage == Stage.MODEL:
            theta_types.add(type(payload))
        if (r, stage) == (2, Stage.SECAGG_START):
            _oversized_reply(fed, r, stage)
            seen["in stage"] = True
        return handle(r, stage, payload)
    fed.holders[1].handle = hostile_then_honest
    fed.run_all(before_holders=lambda: (_hostile(fed), seen.setdefault("before", True)))
    assert seen == {"before": True, "in stage": True} and fed.rcs == {h: 0 for h in range(1, N + 1)}
    log = console.getvalue()
    assert re.search(r"federated rounds \d/2 > round 1: local training, replies [0-3]/4: still working", log), log
    assert theta_types == {bytearray}       # θ came into one BufferSink, handed over without a copy into bytes
    rows = fed.coord.metrics
    assert [(r["round"], r["clients_survived"]) for r in rows] == [(1, N), (2, N - 1)]
    assert all("aborted" not in r for r in rows)
    assert rows[0]["bytes_up"] > 4 * fed.coord.dim * N                    # every masked input crossed in chunks
    for r, survivors in ((1, [1, 2, 3, 4]), (2, [2, 3, 4])):
        assert all(np.linalg.norm(fed.trained[(r, h)].delta) > 1.0 for h in survivors)   # clipping active
        got = fed.trained[(2, 2)].theta if r == 1 else fed.theta()
        # θ_{r+1} = θ_r − Σ_{i ∈ survivors} clip(Δ_i, C) / |survivors|   (FedAvg, lr 1, equal weights)
        expect, tol = fed.expected_step(r, survivors, denominator=len(survivors))
        assert np.all(np.abs(got - expect) <= tol), np.max(np.abs(got - expect) - tol)
        assert np.max(np.abs(got - fed.trained[(r, 2)].theta)) > 1e3 * np.max(tol)   # and the model moved
    ledger = read_ledger(fed.run.privacy / "ledger.jsonl")
    assert [(e["round"], e["survivors"]) for e in ledger] == [(1, [1, 2, 3, 4]), (2, [2, 3, 4])]
    for h in range(1, N + 1):   # each holder's own ledger: released before its masked input, settled at the count
        own = [(e["round"], e["status"], e["survivors"]) for e in read_ledger(fed.run.root / "holders" / str(h) /
                                                                             "ledger.jsonl")]
        assert own == ([(1, "released", 3), (1, "settled", 4)] +
                       ([] if h == 1 else [(2, "released", 3), (2, "settled", 3)])), (h, own)


def test_garbage_only_never_crashes_fetch_parsing(tmp_path):
    lay = make_demo_pki(tmp_path / "pki", holders=2)
    from securefed.secagg import Roster

    channel = GrpcChannel(pki=lay.root, roster=Roster.load(lay.roster), port=0)
    channel.open(welcome_for=lambda h: b"welcome", run_id=b"\x05" * 16)
    d = lay.holder_dir(2)
    c = TransportClient(f"127.0.0.1:{channel.port}",
                        load_client_credentials(cert=d / "cert.pem", key=d / "key.pem", ca=lay.ca_cert))
    try:
        assert c.join(encode_message(Hello(2)), timeout=20) == b"welcome"
        for bad in (b"", b"SFTR", b"\xff" * 100, encode(FetchRequest(b"\x05" * 16, 0, 200, 10)),
                    encode(Header(b"\x05" * 16, 1, 0, Kind.STAGE, 5))):
            frames = [decode(f) for f in c.stub.fetch(bad, timeout=10)]
            assert frames and frames[0].kind == Kind.WAIT
        with pytest.raises(grpc.RpcError) as e:
            c.join(b"not a hello", timeout=10)
        assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert c.status(timeout=10)["board"]["round"] == 0          # still serving
    finally:
        c.close()
        channel.close()


def test_masked_upload_cut_mid_stream_is_undone_and_round_completes(tmp_path, net, monkeypatch):
    """Holder 4's connection breaks after half of its masked input was folded into the running sum: the
    coordinator subtracts those chunks back out, drops holder 4 (secure aggregation reconstructs its masks
    from the others' shares) and the model moves by exactly the mean over holders 1-3."""
    fed = NetFederation.build(tmp_path, net + ["federation.rounds=1"])
    folded, undone, folded4 = {}, set(), threading.Event()
    write, abort = accumulate.MaskedFold.write, accumulate.MaskedFold.abort

    def counting_write(self, offset, data):
        folded[self.sender] = folded.get(self.sender, 0) + len(data)
        out = write(self, offset, data)
        if self.sender == 4:
            folded4.set()
        return out

    def recording_abort(self):
        undone.add(self.sender)
        return abort(self)
    monkeypatch.setattr(accumulate.MaskedFold, "write", counting_write)
    monkeypatch.setattr(accumulate.MaskedFold, "abort", recording_abort)
    cut, handle = {}, fed.holders[4].handle

    def cut_mid_stream(r, stage, payload):
        reply = handle(r, stage, payload)
        if stage != Stage.SECAGG_MASKED or reply is None:
            return reply
        tc = TransportClient(fed.target, fed.creds(4))
        tc.set_run(fed.coord.run_id)
        frames = list(iter_stream_frames(fed.coord.run_id, r, stage, Kind.REPLY, [reply], total_len=len(reply),
                                         chunk_size=1 << 16))

        def half():
            yield from frames[: len(frames) // 2]
            cut["at"] = len(frames) // 2
            # the link breaks only once the coordinator has folded some of it (gRPC may otherwise cancel
            # the call before the server read a frame, and there would be nothing to undo)
            cut["folded_first"] = folded4.wait(30)
            raise ConnectionError("link lost mid-upload")
        with pytest.raises(Exception):   # noqa: B017 - whatever grpc makes of the broken request stream
            tc.stub.submit(half(), timeout=60)
        tc.close()
        return None      # the holder released its input once (H7): it never sends it again
    fed.holders[4].handle = cut_mid_stream
    fed.run_all()
    assert cut["at"] >= 5 and cut["folded_first"] and fed.rcs == {h: 0 for h in range(1, N + 1)}
    assert folded.get(4, 0) > 0 and 4 in undone and not undone & {1, 2, 3}   # folded, then subtracted back out
    (row,) = fed.coord.metrics
    assert row["clients_survived"] == 3 and "aborted" not in row
    (entry,) = read_ledger(fed.run.privacy / "ledger.jsonl")
    assert entry["survivors"] == [1, 2, 3]
    expect, tol = fed.expected_step(1, [1, 2, 3], denominator=3)
    assert np.all(np.abs(fed.theta() - expect) <= tol)
    assert not list((fed.run.root / "spool").iterdir())          # undo journals removed
    own4 = read_ledger(fed.run.root / "holders" / "4" / "ledger.jsonl")
    assert [e["status"] for e in own4] == ["released"]            # charged at the worst case, never settled


def test_central_dp_round_is_noised_and_accounted(tmp_path, net):
    """privacy.mode=central over the network: the coordinator adds N(0, (zC)²) to the sum, divides by the planned
    cohort, and the server ledger records a finite ε for the round."""
    fed = NetFederation.build(tmp_path, net + ["federation.rounds=1", "privacy.mode=central",
                                               "privacy.mechanism=gaussian", "privacy.noise_multiplier=1.0",
                                               "federation.weighting=uniform"])
    fed.run_all()
    assert fed.rcs == {h: 0 for h in range(1, N + 1)}
    (entry,) = read_ledger(fed.run.privacy / "ledger.jsonl")
    assert entry["mode"] == "central" and 0 < entry["epsilon"] < float("inf") and entry["survivors"] == [1, 2, 3, 4]
    assert fed.coord.metrics[0]["epsilon"] == entry["epsilon"]
    expect, _ = fed.expected_step(1, range(1, N + 1), denominator=N)
    noise = fed.theta() - expect                  # θ − (θ₀ − Σ clip(Δ)/N) = −noise / N, std zC/N = 0.25
    assert abs(float(np.std(noise)) - 1.0 / N) < 0.02 / N
    assert abs(float(np.mean(noise))) < 5 * (1.0 / N) / np.sqrt(noise.size)
    for h in range(1, N + 1):
        own = read_ledger(fed.run.root / "holders" / str(h) / "ledger.jsonl")
        assert [e["status"] for e in own] == ["released", "settled"] and own[-1]["mode"] == "central"


def test_a_second_client_with_a_holders_identity_key_is_stopped_and_the_run_completes(tmp_path, net, fed_cache):
    """A newcomer's audit (stop 35): a second `securefed client` for holder 4, with its own state directory, joined the
    run, trained, was refused in every stage and exited 0 with "all rounds done" — and two ledgers would each keep
    part of holder 4's spend. The coordinator now answers a submit for a stage whose reply under that certificate is
    already committed with ACK status 2 (already replied); a client that never sent that reply knows another client
    holds its identity and stops with exit 9 saying so (transport.md §6.3); the run finishes with the other.
    The twin is a real `securefed client` process; the in-process holder 4 answers the Offer only after the twin's
    answer was committed (the stage may have closed by then: the answer is the same), so it is the client told; holders
    1-3 answer the Offer only once holder 4 has it."""
    import subprocess
    import sys
    import time

    import yaml

    from securefed.federation.grpc import EXIT

    fed = NetFederation.build(tmp_path, net + ["federation.rounds=1"])
    twin_yaml = tmp_path / "holder-4b.yaml"
    twin_yaml.write_text(yaml.safe_dump({
        "holder_id": 4, "state_dir": str(tmp_path / "state-4b"), "pki": str(fed.lay.root), "max_failures": 5,
        "data": {"max_sources": 4, "max_bytes_per_source": 30000, "vocab_size": 512, "seq_len": 32,
                 "cache_dir": fed_cache}}))
    got_offer, waited = threading.Event(), {}

    def hooked(h, handle):
        def on(r, stage, payload):
            if stage == Stage.OFFER and h == 4:
                got_offer.set()
                t0 = time.monotonic()
                while (int(Stage.OFFER), 4) not in fed.channel.board.committed and time.monotonic() - t0 < 60:
                    time.sleep(0.02)
                waited["twin_replied"] = (int(Stage.OFFER), 4) in fed.channel.board.committed
            elif stage == Stage.OFFER:    # holders 1-3: not before holder 4 got the Offer (it must not close unseen)
                got_offer.wait(60)
            return handle(r, stage, payload)
        return on
    for h, holder in fed.holders.items():
        holder.handle = hooked(h, holder.handle)
    twin = {}

    def start_twin():     # first, and joined, before the in-process holders start
        twin["p"] = subprocess.Popen([sys.executable, "-m", "securefed.cli", "client", "--config", str(twin_yaml),
                                      "--server", fed.target], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        t0 = time.monotonic()
        while 4 not in fed.channel.board.waiting and twin["p"].poll() is None and time.monotonic() - t0 < 120:
            time.sleep(0.1)
    fed.run_all(before_holders=start_twin)
    out, _ = twin["p"].communicate(timeout=120)
    assert waited["twin_replied"] and EXIT["identity"] == 9
    assert fed.rcs == {1: 0, 2: 0, 3: 0, 4: EXIT["identity"]} and twin["p"].returncode == EXIT["ok"], out
    (row,) = fed.coord.metrics
    assert "aborted" not in row and row["clients_survived"] == 4
    (entry,) = read_ledger(fed.run.privacy / "ledger.jsonl")
    assert entry["survivors"] == [1, 2, 3, 4]
    assert not (fed.run.root / "holders" / "4" / "ledger.jsonl").exists() or all(
        e["status"] != "released" for e in read_ledger(fed.run.root / "holders" / "4" / "ledger.jsonl"))


def test_a_holder_whose_replies_always_arrive_after_the_stage_ended_is_told_so_once_per_round(tmp_path, tiny_run,
                                                                                             caplog):
    """A holder too slow for a deadline (or a twin whose every reply comes second) answered each round's Offer after
    that stage had closed: the coordinator answered ACK 1, the generic "refused", and the client logged
    'round 1 stage OFFER reply refused: refused' and went on, round after round, contributing nothing and finishing
    with "all rounds done". Now (transport.md §6.1) the coordinator answers "too late" (ACK 3) and the client says,
    once per round, that the stage had ended and this holder contributed nothing to the round, and its last line
    names those rounds. Over the real gRPC channel: holder 4 answers each Offer only once the stage has closed
    (network.control = 4 s: each round idles that long for holder 4; holders 1-3 answer every control stage well
    within it)."""
    import logging
    import time

    fed = NetFederation.build(tmp_path, tiny_run + ["network.control=4"])
    handle = fed.holders[4].handle
    answered_late = []

    def late(r, stage, payload):
        reply = handle(r, stage, payload)
        if stage == Stage.OFFER:
            t0 = time.monotonic()
            while (fed.channel.board.round, fed.channel.board.stage) == (r, int(Stage.OFFER)) \
                    and time.monotonic() - t0 < 60:
                time.sleep(0.05)
            answered_late.append(r)
        return reply
    fed.holders[4].handle = late
    caplog.set_level(logging.DEBUG, logger="securefed")
    fed.run_all()
    assert answered_late == [1, 2] and fed.rcs == {1: 0, 2: 0, 3: 0, 4: 0}
    assert [(row["round"], row["clients_survived"]) for row in fed.coord.metrics] == [(1, 3), (2, 3)]
    assert [e["survivors"] for e in read_ledger(fed.run.privacy / "ledger.jsonl")] == [[1, 2, 3], [1, 2, 3]]
    said = [rec for rec in caplog.records if rec.name == "securefed.channel.grpc" and rec.levelno >= logging.WARNING]
    for r in (1, 2):
        told = [rec.getMessage() for rec in said if f"holder 4: round {r} stage OFFER" in rec.getMessage()]
        assert told == [f"holder 4: round {r} stage OFFER had already ended when this holder's reply arrived: this "
                        f"holder contributed nothing to round {r} (the coordinator's deadline for the stage passed "
                        "first: this holder is too slow for it, or its link is)"], [x.getMessage() for x in said]
    assert any(rec.getMessage() == "holder 4: all 2 rounds done; it contributed nothing to 2 of them (round 1, 2): its "
               "replies arrived after their stages had ended" for rec in said), [x.getMessage() for x in said]
    assert not any("reply refused" in rec.getMessage() for rec in caplog.records)
    assert not any("had already ended" in rec.getMessage() and "holder 4:" not in rec.getMessage() for rec in said)
    server = [rec.getMessage() for rec in caplog.records if rec.name == "securefed.transport.board"]
    assert sum("holder 4: answered too late: its reply to round" in m for m in server) == 2, server


@pytest.mark.parametrize("first_refused", [2, 1])
def test_a_holder_that_refused_rounds_says_so_at_its_end(tmp_path, tiny_run, caplog, first_refused):
    """A review of the deployed path: a holder whose ε cap was reached, or whose noise floor was above the run's
    (a round's plan carries it, not the Welcome), refused each later round (signed `refused` entries in its ledger)
    and still ended with exit 0 and only "all N rounds done". Now its last lines name the rounds it took part in
    and those it refused, with the last reason, from its own ledger (restarts included); one that refused every
    round it was offered exits 7 (transport.md §10), as a Welcome below its floors does. Holder 2 refuses from
    round ``first_refused`` on (its record-level check answers a reason); the run goes on with holders 1, 3, 4."""
    import logging

    fed = NetFederation.build(tmp_path, tiny_run)
    h2, asked = fed.holders[2], []
    original = h2._record_level_problem

    def problem():
        asked.append(1)
        return "this test's cap is reached" if len(asked) >= first_refused else original()
    h2._record_level_problem = problem
    caplog.set_level(logging.INFO, logger="securefed")
    fed.run_all()
    assert fed.rcs == {1: 0, 2: 0 if first_refused == 2 else EXIT["policy"], 3: 0, 4: 0}
    assert [(row["round"], row["clients_survived"]) for row in fed.coord.metrics] == \
        [(1, 4 if first_refused == 2 else 3), (2, 3)]
    said = [(rec.levelno, rec.getMessage()) for rec in caplog.records if rec.name == "securefed.channel.grpc"
            and rec.levelno >= logging.WARNING]
    told = ((logging.WARNING, "holder 2: it took part in 1 of the run's rounds (round 1) and refused 1 (round 2); "
                              "the last refusal: this test's cap is reached") if first_refused == 2 else
            (logging.ERROR, "holder 2: it refused every round it was offered (2: round 1, 2) and took part in none; "
                            "the last refusal: this test's cap is reached"))
    assert told in said, said
    assert not any("refus" in m and "holder 2:" not in m for _, m in said), said


def test_a_masked_upload_still_open_at_the_deadline_is_answered_too_late_and_undone(tmp_path, tiny_run, caplog,
                                                                                     monkeypatch):
    """transport.md §6.1: holder 4's masked input stream is still open when the stage's deadline passes (every word
    sent and folded into the sum, the trailer held back). The coordinator cancelled such a stream: the holder saw gRPC
    CANCELLED, logged a "connection problem", reconnected, and never learnt that round 1 went on without it. Now the
    coordinator answers ACK status 3 at once, while the stream is still open, and has already undone the fold and
    freed the stream; the holder says once that round 1's SECAGG_MASKED stage had ended and it contributed nothing to
    round 1, with no reconnect. Its own ledger keeps the release it recorded before uploading (charged at the worst
    case, never settled, as for any late reply) and the model moves by the mean over holders 1-3 only. Real gRPC."""
    import logging
    import time

    import securefed.federation.grpc as fgrpc
    from securefed.transport import client as tclient

    # the stage idles until holder 4's stalled stream meets the deadline; holders 1-3 upload within a second
    fed = NetFederation.build(tmp_path, tiny_run + ["federation.rounds=1", "network.upload=5"])
    four, release, seen = set(), threading.Event(), {}
    handle, real_frames, real_too_late = fed.holders[4].handle, tclient.iter_stream_frames, fgrpc._too_late
    undone, abort = set(), accumulate.MaskedFold.abort

    def on(r, stage, payload):
        four.add(threading.get_ident())           # holder 4's thread: the one whose masked upload stalls
        return handle(r, stage, payload)

    def frames(run_id, r, stage, kind, parts, **kw):
        out = real_frames(run_id, r, stage, kind, parts, **kw)
        if stage != Stage.SECAGG_MASKED or threading.get_ident() not in four:
            return out

        def held():                               # (consumed by gRPC's sending thread)
            *body, trailer = list(out)
            yield from body
            seen["stalled_at"] = time.monotonic()
            release.wait(120)                     # the stream stays open until the test lets go
            yield trailer
        return held()

    def too_late(holder, r, stage, sent):
        seen["answered"] = (time.monotonic(), r, stage, not release.is_set(),
                            4 in fed.channel.board.streaming, 4 in undone)
        release.set()
        return real_too_late(holder, r, stage, sent)

    def recording_abort(self):
        undone.add(self.sender)
        return abort(self)
    fed.holders[4].handle = on
    monkeypatch.setattr(tclient, "iter_stream_frames", frames)
    monkeypatch.setattr(fgrpc, "_too_late", too_late)
    monkeypatch.setattr(accumulate.MaskedFold, "abort", recording_abort)
    caplog.set_level(logging.DEBUG, logger="securefed")
    try:
        fed.run_all()
    finally:
        release.set()
    t_ack, r, stage, still_open, streaming, was_undone = seen["answered"]
    assert (r, stage, still_open, streaming, was_undone) == (1, Stage.SECAGG_MASKED, True, False, True)
    assert t_ack - seen["stalled_at"] < 5 + 5     # at the deadline (5 s after the stage opened), not at the stream's end
    assert fed.rcs == {h: 0 for h in range(1, N + 1)}
    (row,) = fed.coord.metrics
    assert row["clients_survived"] == 3 and "aborted" not in row
    assert read_ledger(fed.run.privacy / "ledger.jsonl")[0]["survivors"] == [1, 2, 3]
    expect, tol = fed.expected_step(1, [1, 2, 3], denominator=3)
    assert np.all(np.abs(fed.theta() - expect) <= tol)      # holder 4's folded words came back out
    assert not list((fed.run.root / "spool").iterdir())
    own4 = read_ledger(fed.run.root / "holders" / "4" / "ledger.jsonl")
    assert [e["status"] for e in own4] == ["released"]      # as for any late reply: charged, never settled
    said = [rec.getMessage() for rec in caplog.records if rec.name == "securefed.channel.grpc"
            and rec.levelno >= logging.WARNING and rec.getMessage().startswith("holder 4:")]
    assert said == ["holder 4: round 1 stage SECAGG_MASKED had already ended when this holder's reply arrived: this "
                    "holder contributed nothing to round 1 (the coordinator's deadline for the stage passed first: "
                    "this holder is too slow for it, or its link is)",
                    "holder 4: all 1 rounds done; it contributed nothing to 1 of them (round 1): its replies arrived "
                    "after their stages had ended"], said            # once, and no "connection problem" or retry
    server = [rec.getMessage() for rec in caplog.records if rec.name == "securefed.transport.board"]
    assert [m for m in server if m.startswith("holder 4:")] == [
        f"holder 4: answered too late: the stage (round 1 stage {int(Stage.SECAGG_MASKED)}) ended before its reply "
        "stream completed"], server


def test_a_holder_restarted_after_accepting_a_round_is_dropped_from_it_when_it_asks_for_the_next(tmp_path, tiny_run,
                                                                                                caplog):
    """A newcomer's run: a `securefed client` stopped with Ctrl-C while training round 2 and started again
    rejoined at round 3 ("next round 3": it never re-enters a round it accepted, federation.md H7), and the coordinator
    went on waiting for its round-2 reply until the train deadline (600 s by default), its console saying only
    "replies 3/4: still working". A holder of the round in progress that asks for a later round has left it: the
    board drops it from the round's stages at once, says so, and the round completes without it (transport.md §6.1).
    Over the real gRPC channel: holder 4 accepts round 1's Offer, then — as its restarted client does — asks for
    round 2 with its certificate; network.train is 120 s, so waiting it out would fail the time bound below."""
    import logging
    import time

    fed = NetFederation.build(tmp_path, tiny_run)
    handle, waited = fed.holders[4].handle, {}

    def restarted(r, stage, payload):
        if (r, stage) != (1, Stage.MODEL):
            return handle(r, stage, payload)
        assert fed.holders[4].next_round == 2            # round 1 accepted: a restart resumes at round 2 (H7)
        c = TransportClient(fed.target, fed.creds(4))    # the restarted client: its own next round
        c.set_run(fed.coord.run_id)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 200:
            got = c.fetch(2, 0, (Kind.STAGE,), wait_s=20)
            if got.kind == Kind.STAGE:                   # round 2 opened: round 1 ended without this holder
                break
        waited["s"] = time.monotonic() - t0
        c.close()
        return None                                      # (this client then finds round 1 over, and takes round 2)
    fed.holders[4].handle = restarted
    caplog.set_level(logging.INFO, logger="securefed")
    fed.run_all()
    assert waited["s"] < 60, waited                      # not the 120 s train deadline
    assert fed.rcs == {1: 0, 2: 0, 3: 0, 4: 0}
    assert [(row["round"], row["clients_survived"]) for row in fed.coord.metrics] == [(1, 3), (2, 4)]
    assert [e["survivors"] for e in read_ledger(fed.run.privacy / "ledger.jsonl")] == [[1, 2, 3], [1, 2, 3, 4]]
    own4 = read_ledger(fed.run.root / "holders" / "4" / "ledger.jsonl")
    assert [(e["round"], e["status"]) for e in own4] == [(2, "released"), (2, "settled")]   # nothing of round 1
    said = [rec.getMessage() for rec in caplog.records if rec.name == "securefed.transport.board"]
    assert any(m.startswith("holder 4 asks for round 2 while round 1 is in progress: it has left round 1") for m in said), said


def test_a_holder_kept_waiting_past_its_patience_leaves_with_exit_6_naming_the_wait(tmp_path, tiny_run, caplog):
    """transport.md §6.4: a coordinator that welcomes a holder and then never opens its round (here: waiting for the
    other three holders, which never come) answered "wait" to every ask, and the holder asked for ever. Over the real
    gRPC channel, holder 1 alone with patience_s = 1 s leaves with exit 6 within seconds, naming what it waited for,
    long before the coordinator's own join deadline (8 s) ends the run."""
    import logging
    import time

    from securefed.federation.grpc import EXIT, run_holder
    from securefed.transport.client import Backoff

    fed = NetFederation.build(tmp_path, tiny_run + ["network.join=8"])
    fed.channel.alive_s = 1.0   # the ended coordinator waits this long to tell the holder it has left (§5.4)
    done = threading.Event()

    def coordinator():
        try:
            fed.coord.run()
        except BaseException:   # noqa: BLE001 - too few holders: the coordinator's own exit, not this test's subject
            pass
        done.set()
    threading.Thread(target=coordinator, daemon=True).start()
    while fed.channel.port is None and not done.is_set():
        time.sleep(0.05)
    caplog.set_level(logging.INFO, logger="securefed")
    t0 = time.monotonic()
    rc = run_holder(fed.holders[1], target=fed.target, creds=fed.creds(1), max_failures=5, patience_s=1.0,
                    backoff=Backoff(base=0.05, cap=0.2))
    took = time.monotonic() - t0
    assert done.wait(60), "the coordinator did not end at its join deadline"
    fed.channel.close()
    said = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert rc == EXIT["unreachable"] and took < 6, (rc, took, said)
    assert any("the coordinator has sent no stage message for" in m and "round 1: the round has not opened" in m
               and "patience_s" in m for m in said), said
