"""A holder's raw gRPC stub over mutual TLS, for tests that speak to a coordinator call by call."""

import grpc

from securefed.transport.service import Stub, load_client_credentials, make_channel


def holder_stub(lay, port: int, hid: int):
    """(Stub, channel) of holder ``hid`` of the PKI ``lay`` to 127.0.0.1:``port``, once the channel is ready."""
    d = lay.holder_dir(hid)
    creds = load_client_credentials(cert=d / "cert.pem", key=d / "key.pem", ca=lay.ca_cert)
    ch = make_channel(f"127.0.0.1:{port}", creds)
    grpc.channel_ready_future(ch).result(timeout=10)
    return Stub(ch), ch
