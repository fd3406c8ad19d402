"""Holder side of the wire: fetch and submit streams, reconnect with back-off (protocols/transport.md §5, §6).

``Backoff`` is capped exponential back-off with full jitter (delay = U(0, min(cap, base·2^attempt))), so
a coordinator restart does not see every holder reconnect in the same instant. Transient gRPC errors
(UNAVAILABLE, DEADLINE_EXCEEDED during connection) are retried by the caller's loop; PERMISSION_DENIED
and UNAUTHENTICATED are not (a refused certificate will not become valid by retrying).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import grpc

from securefed.transport.frames import (DEFAULT_CHUNK, Ack, FetchRequest, FrameError, Header, Kind, decode, encode,
                                        iter_stream_frames)
from securefed.transport.service import MAX_JSON, Stub, make_channel, parse_json
from securefed.transport.stream import BytesSink, Sink, StreamReceiver, expect_header

__all__ = ["Backoff", "Fetched", "TransportClient", "FATAL_CODES", "Refused", "ConnectProblem", "classify_connect_error"]

FATAL_CODES = (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAUTHENTICATED)


@dataclass(frozen=True)
class ConnectProblem:
    """Why a connection to the coordinator did not come up (§6.3, §7.1), in words an operator can act on.
    ``final``: retrying cannot help — this holder refuses the coordinator's certificate (§7.1)."""
    text: str
    final: bool = False


# gRPC core's words for each failure (its last connection error, in the call's details), most specific first
_SIGNS = (
    (("hostname verification", "no match found for server name"), True,
     "the coordinator's certificate does not name {name}, the server name this holder checks (§7.1): connect to "
     "the name the certificate was issued for, or set the holder config's server_name"),
    (("alert_unknown_ca", "alert_bad_certificate", "alert_certificate_expired", "alert_certificate_revoked",
      "alert_certificate_unknown", "alert_unsupported_certificate", "certificate_required"), True,
     "the coordinator at {target} refused this holder's certificate in the TLS handshake (gRPC says {detail!r}): "
     "this holder's pki is not the federation's, its certificate was issued by another CA, or it has expired"),
    (("certificate has expired", "certificate is not yet valid", "not yet valid"), True,
     "the coordinator's certificate is outside its validity window by this machine's clock (gRPC says {detail!r}): "
     "it has expired and must be re-issued, or this machine's clock is wrong"),
    (("certificate signature failure", "unable to get local issuer", "self signed certificate",
      "certificate_verify_failed", "certificate verify failed"),
     True,
     "the coordinator's certificate does not verify against the CA this holder trusts (its pki's ca.pem; gRPC says "
     "{detail!r}): this holder's pki is another federation's, or the coordinator's certificate is not of this "
     "federation's CA"),
    (("wrong_version_number", "packet_length_too_long", "http_request", "unexpected_record"), False,
     "what listens at {target} does not speak TLS (gRPC says {detail!r}): is it `securefed server`? (--server, or "
     "the holder config's server)"),
    (("tls handshake failed", "ssl handshake failed"), False,
     "the TLS handshake with {target} failed (gRPC says {detail!r}): what listens there may not be `securefed "
     "server`"),
    (("socket closed", "connection reset", "end of tcp stream", "handshake read failed"), False,
     "{target} closed the connection during the TLS handshake: the coordinator may not accept this holder's "
     "certificate (issued by another federation's CA, or expired), or what listens there is not `securefed server`"),
    (("connection refused",), False, "nothing accepts connections at {target} (connection refused): is `securefed "
                                      "server` running there?"),
    (("dns resolution failed", "name resolution", "could not resolve", "domain name not found"), False,
     "the host of {target} cannot be resolved"),
)


def classify_connect_error(e: grpc.RpcError, *, target: str, server_name: str | None = None) -> ConnectProblem | None:
    """A failed call's connection problem, from gRPC's details; None when the call reached a server (any other
    code) or gRPC gave no recognisable reason."""
    code = e.code() if hasattr(e, "code") else None
    if code not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return None
    detail = str(e.details() if hasattr(e, "details") else "") or ""
    low = detail.lower()
    name = server_name or target.rsplit(":", 1)[0]
    for signs, final, text in _SIGNS:
        hit = next((s for s in signs if s in low), None)
        if hit is not None:
            return ConnectProblem(text.format(target=target, name=name, detail=hit), final)
    return None


class Refused(RuntimeError):
    """The coordinator refused a submitted stream (Ack status != 0, in ``status``)."""

    def __init__(self, reason: str, status: int = 1) -> None:
        super().__init__(reason)
        self.status = status


@dataclass
class Backoff:
    base: float = 0.5
    cap: float = 30.0
    attempt: int = 0

    def next_delay(self, rng: random.Random | None = None) -> float:
        hi = min(self.cap, self.base * (2 ** min(self.attempt, 30)))
        self.attempt += 1
        return (rng or random).uniform(0, hi)

    def reset(self) -> None:
        self.attempt = 0


@dataclass
class Fetched:
    kind: Kind
    payload: bytes | bytearray    # bytearray: what a sink_for BufferSink collected (a holder's θ)
    stage: int = 0


class TransportClient:
    def __init__(self, target: str, creds: grpc.ChannelCredentials, *, server_name: str | None = None,
                 chunk_size: int = DEFAULT_CHUNK, max_fetch: int = 1 << 34) -> None:
        self.target, self.creds, self.server_name = target, creds, server_name
        self.chunk_size, self.max_fetch = chunk_size, max_fetch
        self.run_id = b"\x00" * 16
        self.bytes_up = self.bytes_down = 0
        self._connect()

    def _connect(self) -> None:
        self.channel = make_channel(self.target, self.creds, server_name=self.server_name)
        self.stub = Stub(self.channel)

    def reconnect(self) -> None:
        self.channel.close()
        self._connect()

    def close(self) -> None:
        self.channel.close()

    def wait_ready(self, timeout: float) -> None:
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def join(self, hello: bytes, *, timeout: float) -> bytes:
        """The Join RPC: hello bytes in, welcome bytes out (their codec is the caller's); bounded in size."""
        reply = self.stub.join(hello, timeout=timeout, wait_for_ready=True)
        if not isinstance(reply, bytes) or len(reply) > MAX_JSON:
            raise FrameError("welcome: not bytes or too large")
        return reply

    def set_run(self, run_id: bytes) -> None:
        if not isinstance(run_id, bytes) or len(run_id) != 16:
            raise ValueError("run_id must be 16 bytes")
        self.run_id = run_id

    def status(self, *, timeout: float) -> dict:
        return parse_json(self.stub.status(b"", timeout=timeout), "status")

    def connect_problem(self, *, timeout: float = 10.0) -> ConnectProblem | None:
        """One call that does not wait for the channel to be ready, so gRPC's reason for a failed connection
        comes back at once (a Join waits for readiness and would end in a bare DEADLINE_EXCEEDED, however the
        TLS handshake failed). None: the coordinator answered (whatever it said)."""
        try:
            self.stub.status(b"", timeout=timeout)
        except grpc.RpcError as e:
            return classify_connect_error(e, target=self.target, server_name=self.server_name)
        return None

    def fetch(self, round_index: int, from_stage: int, kinds: tuple[Kind, ...], *, wait_s: float,
              max_len: int | None = None, sink_for: Callable[[Header], Sink | None] | None = None) -> Fetched:
        """Long-poll the coordinator for this holder's first stream of round ``round_index`` at a stage
        ≥ ``from_stage`` (or a WAIT); verify it (§4.2). ``sink_for(header)``: where a stream goes, chosen once
        its (checked) header is in (None: the default bounded ``BytesSink``)."""
        req = encode(FetchRequest(self.run_id, round_index, from_stage, int(wait_s * 1000)))
        frames = self.stub.fetch(req, timeout=wait_s + 30)
        it = iter(frames)
        try:
            head = decode(next(it))
        except StopIteration:
            raise FrameError("empty fetch response") from None
        h = expect_header(head, run_id=self.run_id, round_index=round_index, stage=None,
                          kinds=(*kinds, Kind.WAIT), max_len=max_len or self.max_fetch)
        if h.stage < from_stage:
            raise FrameError(f"stream is for stage {h.stage}, asked for stages from {from_stage}")
        sink = (sink_for(h) if sink_for is not None else None) or BytesSink(h.total_len)
        rx = StreamReceiver(h, sink)
        for raw in it:
            rx.feed(decode(raw))
            self.bytes_down += len(raw)
        rx.finish()
        return Fetched(h.kind, sink.value or b"", h.stage)

    def submit(self, round_index: int, stage: int, kind: Kind, parts: Iterable[bytes | memoryview] | bytes, *,
               timeout: float) -> None:
        """Stream a payload (bytes or parts): its length in the header, its SHA-256, taken while the chunks go
        out, in the trailer (§4.1)."""
        if isinstance(parts, (bytes, bytearray, memoryview)):
            parts = [parts]
        parts = list(parts)
        total = sum(memoryview(p).nbytes for p in parts)
        frames = iter_stream_frames(self.run_id, round_index, stage, kind, parts, total_len=total,
                                    chunk_size=self.chunk_size)

        def counted():
            for f in frames:
                self.bytes_up += len(f)
                yield f

        ack = decode(self.stub.submit(counted(), timeout=timeout))
        if not isinstance(ack, Ack):
            raise FrameError("submit answer is not an ack")
        if ack.status != 0:
            raise Refused(ack.reason or "refused", ack.status)
