"""Mutual TLS and identity: who may talk to the coordinator, and as whom (protocols/transport.md §7)."""

import json
import os
import stat

import grpc
import pytest

from securefed.federation.messages import Hello
from securefed.federation.messages import encode as encode_message
from securefed.transport.client import TransportClient
from securefed.transport.frames import Ack, encode
from securefed.transport.pki import holder_id_from_cert, load_identity, make_demo_pki
from securefed.transport.service import Handlers, load_client_credentials, make_server


@pytest.fixture(scope="module")
def pkis(tmp_path_factory):
    root = tmp_path_factory.mktemp("pki")
    return make_demo_pki(root / "fed", holders=3), make_demo_pki(root / "other", holders=3)


@pytest.fixture(scope="module")
def server(pkis):
    lay, _ = pkis
    seen = []
    handlers = Handlers(join=lambda h, req, ctx: (seen.append(h), json.dumps({"run_id": "00" * 16}).encode())[1],
                        fetch=lambda h, req, ctx: iter(()), submit=lambda h, it, ctx: encode(Ack(0)),
                        status=lambda: {"ok": True})
    srv, port = make_server(handlers, host="127.0.0.1", port=0, cert=lay.server_cert, key=lay.server_key,
                            ca=lay.ca_cert, roster_ids=frozenset({1, 2}))     # holder 3 has a cert, no roster entry
    srv.start()
    yield port, seen
    srv.stop(0)


def _client(port, creds, name=None):
    return TransportClient(f"127.0.0.1:{port}", creds, server_name=name)


def _creds(lay, hid, ca=None):
    d = lay.holder_dir(hid)
    return load_client_credentials(cert=d / "cert.pem", key=d / "key.pem", ca=ca or lay.ca_cert)


def test_roster_holder_with_ca_signed_cert_is_accepted_and_identified(pkis, server):
    lay, _ = pkis
    port, seen = server
    c = _client(port, _creds(lay, 2))
    c.join(encode_message(Hello(1)), timeout=10)      # claims to be holder 1 ...
    assert seen[-1] == 2                              # ... the id comes from the certificate, not from the message
    c.close()


def _expect_refused(c, code):
    with pytest.raises(grpc.RpcError) as e:
        c.stub.status(b"", timeout=5)
    assert e.value.code() == code
    c.close()


def test_cert_from_another_ca_refused_at_handshake(pkis, server):
    lay, other = pkis
    d = other.holder_dir(1)   # holder 1 of another federation: same id, wrong CA
    creds = load_client_credentials(cert=d / "cert.pem", key=d / "key.pem", ca=lay.ca_cert)
    _expect_refused(_client(server[0], creds), grpc.StatusCode.UNAVAILABLE)


def test_client_without_certificate_refused(pkis, server):
    lay, _ = pkis
    creds = grpc.ssl_channel_credentials(root_certificates=lay.ca_cert.read_bytes())
    _expect_refused(_client(server[0], creds), grpc.StatusCode.UNAVAILABLE)


def test_ca_signed_holder_not_on_roster_refused(pkis, server):
    lay, _ = pkis
    _expect_refused(_client(server[0], _creds(lay, 3)), grpc.StatusCode.PERMISSION_DENIED)


def test_wrong_server_certificate_refused_by_client(pkis, server):
    lay, other = pkis
    # the holder trusts only the other federation's CA: our server's certificate does not verify
    _expect_refused(_client(server[0], _creds(lay, 1, ca=other.ca_cert)), grpc.StatusCode.UNAVAILABLE)


def test_server_name_mismatch_refused(pkis, server):
    lay, _ = pkis
    _expect_refused(_client(server[0], _creds(lay, 1), name="coordinator.evil.example"), grpc.StatusCode.UNAVAILABLE)


def test_keygen_permissions_and_roster(pkis, tmp_path):
    lay, _ = pkis
    for p in [lay.root, *lay.root.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        if p.is_dir():
            assert mode == 0o700, p
        elif p.name.endswith(".key") or p.name == "key.pem":
            assert mode == 0o600, p
    from securefed.secagg import Roster

    roster = Roster.load(lay.roster)
    assert sorted(roster.keys) == [1, 2, 3]
    for h in (1, 2, 3):
        assert load_identity(lay.holder_dir(h) / "identity.key").public_bytes == roster.keys[h]
        assert holder_id_from_cert((lay.holder_dir(h) / "cert.pem").read_bytes()) == h
    assert b"PRIVATE" not in lay.roster.read_bytes()


def test_layout_lists_every_private_key_a_fresh_pki_holds(pkis):
    """Layout.private_files is what `securefed simulate` removes at a run's end (threat SYS-34): it must name every
    file of make_demo_pki that holds a private key — the CA's, the coordinator's TLS and identity keys, 2 per holder
    (3 + 2·3 = 9 here) — and nothing public, so a key added to make_demo_pki and not to the list fails here."""
    lay, _ = pkis
    private = {p for p in lay.root.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()}
    assert set(lay.private_files()) == private and len(private) == 3 + 2 * 3


def test_keygen_never_overwrites(pkis):
    lay, _ = pkis
    with pytest.raises(FileExistsError):
        make_demo_pki(lay.root, holders=1)


def test_identity_file_readable_by_others_refused(pkis, tmp_path):
    lay, _ = pkis
    src = lay.holder_dir(1) / "identity.key"
    p = tmp_path / "identity.key"
    p.write_bytes(src.read_bytes())
    os.chmod(p, 0o644)
    with pytest.raises(PermissionError):
        load_identity(p)


def test_cert_without_holder_identity_rejected(pkis):
    lay, _ = pkis
    with pytest.raises(ValueError, match="exactly one holder"):
        holder_id_from_cert(lay.server_cert.read_bytes())


def _holder_yaml(path, hid, pki, state):
    import yaml

    path.write_text(yaml.safe_dump({"holder_id": hid, "state_dir": str(state), "pki": str(pki)}))
    return path


def test_client_refuses_mismatched_id_or_identity(pkis, tmp_path, capsys):
    """`securefed client` checks its own key material before it connects: an id without credentials, or an
    identity key that is not the holder's roster entry, is one clear usage error (exit 2), nothing sent."""
    import shutil

    from securefed.federation.client import main
    from securefed.federation.holder import Holder
    from securefed.federation.holder_config import load_holder_config
    from securefed.secagg import Roster

    lay, other = pkis
    # target port 1: nothing listens there, so any attempt to connect would end in exit 6, not 2
    assert main(str(_holder_yaml(tmp_path / "h9.yaml", 9, lay.root, tmp_path / "s9")), server="127.0.0.1:1") == 2
    assert "missing key file" in capsys.readouterr().err
    # holder 1's directory with another federation's identity key: not its roster entry
    fake = tmp_path / "fake"
    shutil.copytree(lay.root, fake)
    os.chmod(fake / "holders" / "1" / "identity.key", 0o600)
    (fake / "holders" / "1" / "identity.key").write_bytes((other.holder_dir(1) / "identity.key").read_bytes())
    cfg = _holder_yaml(tmp_path / "h1.yaml", 1, fake, tmp_path / "s1")
    assert main(str(cfg), server="127.0.0.1:1") == 2
    assert "roster" in capsys.readouterr().err
    with pytest.raises(ValueError, match="roster"):
        Holder(load_holder_config(cfg), identity=load_identity(fake / "holders" / "1" / "identity.key"),
               roster=Roster.load(fake / "roster.yaml"))
    assert not (tmp_path / "s9").exists()


def test_a_coordinator_certificate_expired_by_the_holders_clock_is_final_and_named(pkis, tmp_path):
    """transport.md §6.3: a coordinator serving an expired certificate (or a holder whose clock is off) failed every
    Join after 60 s as "no coordinator answers"; the holder now reads gRPC's reason and stops (exit 3), naming the
    validity window and the clock."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from securefed.transport.client import classify_connect_error

    lay, _ = pkis
    ca = x509.load_pem_x509_certificate(lay.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(lay.ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "old")]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now - dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                         serialization.NoEncryption()))
    handlers = Handlers(join=lambda h, req, ctx: b"{}", fetch=lambda h, req, ctx: iter(()),
                        submit=lambda h, it, ctx: encode(Ack(0)), status=lambda: {})
    srv, port = make_server(handlers, host="127.0.0.1", port=0, cert=tmp_path / "cert.pem", key=tmp_path / "key.pem",
                            ca=lay.ca_cert, roster_ids=frozenset({1, 2}))
    srv.start()
    try:
        c = _client(port, _creds(lay, 1))
        problem = c.connect_problem()
        c.close()
    finally:
        srv.stop(0)
    assert problem is not None and problem.final, problem
    assert "outside its validity window by this machine's clock" in problem.text
    assert classify_connect_error(grpc.RpcError(), target="x:1") is None    # not a connection failure: no verdict


_HANDSHAKES = r'''
import json, logging, sys, time
import grpc
from securefed.transport.pki import Layout
from securefed.transport.service import Handlers, Stub, load_client_credentials, make_channel, make_server

records, calls = [], []
class Keep(logging.Handler):
    def emit(self, record):
        records.append(record.name + ": " + record.getMessage())
logging.getLogger().addHandler(Keep())
logging.getLogger().setLevel(logging.DEBUG)
lay, other = Layout(sys.argv[1]), Layout(sys.argv[2])
seen = lambda *a: calls.append(1) or b"{}"
srv, port = make_server(Handlers(join=seen, fetch=seen, submit=seen, status=lambda: calls.append(1) or {}),
                        host="127.0.0.1", port=0, cert=lay.server_cert, key=lay.server_key, ca=lay.ca_cert,
                        roster_ids=frozenset({1}))
srv.start()
d = other.holder_dir(1)
for name, ch in (
        ("another CA", make_channel(f"127.0.0.1:{port}", load_client_credentials(cert=d / "cert.pem", key=d / "key.pem",
                                                                             ca=lay.ca_cert))),
        ("no certificate", make_channel(f"127.0.0.1:{port}", grpc.ssl_channel_credentials(lay.ca_cert.read_bytes()))),
        ("plain text", grpc.insecure_channel(f"127.0.0.1:{port}"))):
    print("=== " + name, file=sys.stderr, flush=True)
    try:
        Stub(ch).status(b"", timeout=3)
    except grpc.RpcError:
        pass
    ch.close()
    time.sleep(0.3)
print("=== end", file=sys.stderr, flush=True)
srv.stop(0)
print(json.dumps({"records": records, "calls": len(calls)}))
'''


@pytest.mark.parametrize("verbosity", ["INFO", "ERROR"])
def test_a_failed_handshake_reaches_no_securefed_code_and_only_grpc_core_says_it_on_stderr(pkis, verbosity):
    """transport.md §7.1, a stated limit: a peer whose TLS handshake fails (a certificate of another CA, none, plain
    text to the TLS port) reaches no handler, interceptor or Python logger of the coordinator — grpc Python offers no
    hook for it. The one trace is gRPC core's own line on stderr, one per failed attempt with OpenSSL's reason and
    without the peer's address, printed only with GRPC_VERBOSITY=INFO; `securefed` sets ERROR unless the operator
    sets it, and then there is none. If a grpc upgrade changes any of this, §7.1 and threat_models/transport.md
    (TR-01) must change with it."""
    import subprocess
    import sys

    lay, other = pkis
    env = dict(os.environ, GRPC_VERBOSITY=verbosity)
    env.pop("GRPC_TRACE", None)
    p = subprocess.run([sys.executable, "-c", _HANDSHAKES, str(lay.root), str(other.root)], env=env, text=True,
                       capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out == {"records": [], "calls": 0}, out          # nothing reached securefed's code or Python's logging
    said, attempt = {}, None
    for line in p.stderr.splitlines():
        if line.startswith("=== "):
            attempt = line[4:]
        elif "Handshake failed" in line:
            said.setdefault(attempt, []).append(line)
    if verbosity == "ERROR":
        assert said == {}, said
        return
    assert sorted(said) == ["another CA", "no certificate", "plain text"] and all(len(v) == 1 for v in said.values())
    assert "certificate" in said["another CA"][0].lower()
    assert any(s in said["no certificate"][0] for s in ("PEER_DID_NOT_RETURN_A_CERTIFICATE", "CERTIFICATE_REQUIRED"))
    assert any(s in said["plain text"][0] for s in ("WRONG_VERSION_NUMBER", "HTTP_REQUEST"))
