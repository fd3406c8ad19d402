"""The gRPC service with mutual TLS: bytes in, bytes out (protocols/transport.md §2, §6, §7).

Service ``securefed.transport.v1.Coordinator``, defined with grpc's generic handlers (no codegen;
every request/response is one frame of securefed.transport.frames or a bounded JSON document):

    Join    unary-unary    JSON hello            -> JSON welcome (run id, config, next round)
    Fetch   unary-stream   FETCH frame           -> HEADER + CHUNK frames (the holder's stream for a stage)
    Submit  stream-unary   HEADER + CHUNK frames -> ACK frame
    Status  unary-unary    empty                 -> JSON status (round, stage, holders)

Every RPC first authenticates the peer: the TLS layer has verified its certificate against the
federation CA (``require_client_auth=True``); the holder id is read from that certificate and must be on
the roster, else the call ends with PERMISSION_DENIED and one generic message (no oracle).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path

import grpc

from securefed import jsonio
from securefed.transport.frames import MAX_FRAME
from securefed.transport.pki import holder_id_from_cert
from securefed.transport.ratelog import HolderLog

__all__ = ["SERVICE", "MAX_JSON", "CALLS_PER_HOLDER", "channel_options", "server_options", "make_server", "listen_problem",
           "make_channel", "peer_holder_id", "Handlers", "Stub", "load_client_credentials", "server_workers"]

log = logging.getLogger("securefed.transport")

SERVICE = "securefed.transport.v1.Coordinator"
MAX_JSON = 1 << 20
_MSG_LIMIT = MAX_FRAME + 4096
# Flow control (protocols/transport.md §4.3): BDP probing lets each stream's receive window grow to many
# MB, which the server would buffer for *every* concurrent upload (measured: ~60 MB per stream at
# n = 8, P = 125M). A fixed 4 MiB window bounds buffering to 4 MiB per stream and still allows
# 4 MiB / RTT per stream (80 MB/s at 50 ms).
STREAM_WINDOW = 4 << 20
_WINDOW = [("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", STREAM_WINDOW)]
_KEEPALIVE = [
    ("grpc.keepalive_time_ms", 20_000),            # ping an idle connection every 20 s ...
    ("grpc.keepalive_timeout_ms", 20_000),         # ... and declare it dead after 20 s without an answer
    ("grpc.keepalive_permit_without_calls", 1),    # keep pinging while a holder trains (no RPC in flight)
    ("grpc.http2.max_pings_without_data", 0),
]


def channel_options(server_name: str | None = None) -> list[tuple[str, object]]:
    opts = [("grpc.max_send_message_length", _MSG_LIMIT), ("grpc.max_receive_message_length", _MSG_LIMIT),
            ("grpc.enable_retries", 0), *_WINDOW, *_KEEPALIVE]
    if server_name:
        opts.append(("grpc.ssl_target_name_override", server_name))
    return opts


def server_options() -> list[tuple[str, object]]:
    return [("grpc.max_send_message_length", _MSG_LIMIT), ("grpc.max_receive_message_length", _MSG_LIMIT),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000), ("grpc.http2.max_ping_strikes", 0),
            ("grpc.so_reuseport", 0), *_WINDOW, *_KEEPALIVE]


def peer_holder_id(context: grpc.ServicerContext, roster_ids: frozenset[int] | set[int], say: Callable) -> int:
    """The authenticated holder id of this call's peer, or abort PERMISSION_DENIED (§7.2). ``say``: the
    ``ratelog.HolderLog.say`` the refusal is logged through (its lines rate-limited, §2)."""
    auth = context.auth_context()
    pems = auth.get("x509_pem_cert") or []
    try:
        if len(pems) != 1:
            raise ValueError("no single peer certificate")
        hid = holder_id_from_cert(pems[0])
        if hid not in roster_ids:
            raise ValueError("holder not on the roster")
    except ValueError as e:
        say(None, logging.WARNING, "refused a call from %s: %s", context.peer(), e)
        context.abort(grpc.StatusCode.PERMISSION_DENIED, "not authorized")
        raise  # unreachable: abort raises
    return hid


# §2: at most this many calls of one holder run at once (a holder's loop needs one Fetch or Submit at a time,
# plus a Join or Status, plus a long-poll its reconnect left behind); the rest are refused at once
CALLS_PER_HOLDER = 4


# calls allowed to wait for a worker beyond the pool (§2): a flooding holder's extra calls queue and are refused
# when a worker reaches them, instead of filling the global limit and turning the others' calls away; each
# queued call can buffer at most one stream window (STREAM_WINDOW), so this bounds that memory too
QUEUE_HEADROOM = 256


def server_workers(roster_size: int) -> int:
    """The server's thread pool and global call limit: every roster holder's CALLS_PER_HOLDER, plus room for
    calls refused on entry, so no holder's calls can take another holder's share (§2)."""
    return max(32, CALLS_PER_HOLDER * roster_size + 16)


class _HolderSlots:
    """Per-holder concurrent-call accounting (§2): a call past ``limit`` ends RESOURCE_EXHAUSTED at once."""

    def __init__(self, limit: int) -> None:
        self.limit, self.active, self.lock = limit, {}, threading.Lock()
        self._logged: dict[int, float] = {}

    def take(self, hid: int, context) -> None:
        with self.lock:
            n = self.active.get(hid, 0)
            ok = n < self.limit
            if ok:
                self.active[hid] = n + 1
            now = time.monotonic()
            say = not ok and now - self._logged.get(hid, -1e9) > 60
            if say:
                self._logged[hid] = now
        if not ok:
            if say:   # once a minute per holder: a flood must not flood the log too
                log.warning("holder %d: more than %d concurrent calls; refusing the extra ones", hid, self.limit)
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, f"more than {self.limit} concurrent calls from this holder")

    def give(self, hid: int) -> None:
        with self.lock:
            n = self.active.get(hid, 1) - 1
            if n:
                self.active[hid] = n
            else:
                self.active.pop(hid, None)


class Handlers:
    """What the coordinator implements; each gets (holder_id, request, context)."""

    def __init__(self, *, join: Callable, fetch: Callable, submit: Callable, status: Callable) -> None:
        self.join, self.fetch, self.submit, self.status = join, fetch, submit, status


def make_server(handlers: Handlers, *, host: str, port: int, cert: Path, key: Path, ca: Path,
                roster_ids: frozenset[int], max_workers: int = 64) -> tuple[grpc.Server, int]:
    """A started-later gRPC server with mTLS bound to host:port (port 0: pick a free one)."""

    slots = _HolderSlots(CALLS_PER_HOLDER)
    refusals = HolderLog(log)   # a certificate not on the roster may call as often as it likes: its lines are limited
    if max_workers < server_workers(len(roster_ids)):
        raise ValueError(f"max_workers {max_workers} leaves some holder less than its {CALLS_PER_HOLDER} calls: "
                         "use server_workers(len(roster))")

    def authed(fn):                  # unary response: the holder's slot is held for the call
        def call(request, context):
            hid = peer_holder_id(context, roster_ids, refusals.say)
            slots.take(hid, context)
            try:
                return fn(hid, request, context)
            finally:
                slots.give(hid)
        return call

    def authed_stream(fn):           # streamed response: held until the last frame is out or the call ends
        def call(request, context):
            hid = peer_holder_id(context, roster_ids, refusals.say)
            slots.take(hid, context)
            try:
                yield from fn(hid, request, context)
            finally:
                slots.give(hid)
        return call

    rpc = {
        "Join": grpc.unary_unary_rpc_method_handler(authed(handlers.join)),
        "Fetch": grpc.unary_stream_rpc_method_handler(authed_stream(handlers.fetch)),
        "Submit": grpc.stream_unary_rpc_method_handler(authed(handlers.submit)),
        # any holder with a valid certificate may read the status line
        "Status": grpc.unary_unary_rpc_method_handler(authed(lambda _hid, _req, _ctx: jsonio.dumps(handlers.status()).encode())),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
                         handlers=[grpc.method_handlers_generic_handler(SERVICE, rpc)],
                         options=server_options(), maximum_concurrent_rpcs=max_workers + QUEUE_HEADROOM)
    creds = grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())], root_certificates=ca.read_bytes(),
                                        require_client_auth=True)
    try:
        bound = server.add_secure_port(f"{host}:{port}", creds)
    except RuntimeError:   # grpcio >= 1.5x raises instead of returning 0
        bound = 0
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}: {listen_problem(host, port) or 'gRPC could not bind it'}")
    return server, bound


def listen_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on now (in use, not an address of this machine), or None.
    `securefed server` asks before it writes its run directory, so a taken port costs nothing (a gRPC
    bind failure comes only after the run's data and first checkpoint). SO_REUSEADDR as gRPC sets it:
    a port in TIME_WAIT is free."""
    import socket

    try:
        infos = socket.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError, OverflowError) as e:
        return f"{host!r} is not an address or name this machine resolves ({e})"
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            return e.strerror or str(e)
    return None


def load_client_credentials(*, cert: Path, key: Path, ca: Path) -> grpc.ChannelCredentials:
    return grpc.ssl_channel_credentials(root_certificates=ca.read_bytes(), private_key=key.read_bytes(),
                                        certificate_chain=cert.read_bytes())


def make_channel(target: str, creds: grpc.ChannelCredentials, *, server_name: str | None = None) -> grpc.Channel:
    return grpc.secure_channel(target, creds, options=channel_options(server_name))


class Stub:
    """Client-side callables of the four RPCs (raw bytes, no (de)serializers)."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.join = channel.unary_unary(f"/{SERVICE}/Join")
        self.fetch: Callable[..., Iterator[bytes]] = channel.unary_stream(f"/{SERVICE}/Fetch")
        self.submit = channel.stream_unary(f"/{SERVICE}/Submit")
        self.status = channel.unary_unary(f"/{SERVICE}/Status")


def parse_json(data: bytes, what: str) -> dict:
    """A bounded JSON object; ValueError otherwise."""
    if not isinstance(data, bytes) or len(data) > MAX_JSON:
        raise ValueError(f"{what}: not bytes or larger than {MAX_JSON}")
    try:   # strict (no duplicate key, no NaN); nested too deeply for the parser is a ValueError too (jsonio.loads)
        obj = jsonio.loads(data.decode("utf-8"))
    except ValueError as e:   # UnicodeDecodeError and json.JSONDecodeError are ValueErrors
        raise ValueError(f"{what}: not JSON ({type(e).__name__}: {e})"[:200]) from None
    if not isinstance(obj, dict):
        raise ValueError(f"{what}: not a JSON object")
    return obj
