"""Demo PKI and identity files for the networked deployment (protocols/transport.md §7).

``securefed keygen DIR --holders N`` writes (directories 0700, private files 0600):

    DIR/ca.pem, DIR/ca.key                  demo CA (ECDSA P-256); a real federation keeps its CA offline
    DIR/server/{cert.pem,key.pem}           coordinator: SAN DNS:localhost, IP:127.0.0.1 (+ --server-name)
    DIR/server/identity.key                 coordinator's Ed25519 key: signs the privacy ledgers (protocols/dp.md §7)
    DIR/holders/<id>/{cert.pem,key.pem}     holder TLS cert: CN=holder-<id>, SAN URI securefed:holder:<id>
    DIR/holders/<id>/identity.key           holder's Ed25519 identity (secagg signatures), PKCS#8 PEM
    DIR/roster.yaml                         holder id -> Ed25519 public key (protocols/secagg.md §9)

``Layout.private_files`` lists the private ones (``ca.key``, every ``key.pem`` and ``identity.key``).

The holder id is carried by the certificate (SAN URI ``securefed:holder:<id>``, CN as a fallback);
the server takes the id from the TLS-verified peer certificate only (never from a message).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from pathlib import Path
from typing import Iterator

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from securefed.secagg import IdentityKey, Roster

__all__ = ["HOLDER_URI", "make_demo_pki", "holder_id_from_cert", "load_identity", "write_private", "Layout",
           "check_tls_files", "TlsFilesError"]

HOLDER_URI = "securefed:holder:"
_CN_RE = re.compile(r"^holder-([1-9][0-9]{0,9})$")
_MAX_ID = (1 << 31) - 1
_VALID_DAYS = 365


class Layout:
    """Paths inside a keygen directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.ca_cert, self.ca_key = self.root / "ca.pem", self.root / "ca.key"
        self.server_cert, self.server_key = self.root / "server" / "cert.pem", self.root / "server" / "key.pem"
        self.server_identity = self.root / "server" / "identity.key"   # Ed25519: signs the privacy ledgers
        self.roster = self.root / "roster.yaml"

    def holder_dir(self, hid: int) -> Path:
        return self.root / "holders" / str(hid)

    def holder_key(self, hid: int) -> Path:
        return self.holder_dir(hid) / "key.pem"

    def holder_identity(self, hid: int) -> Path:
        return self.holder_dir(hid) / "identity.key"

    def private_files(self) -> list[Path]:
        """Every private key :func:`make_demo_pki` writes here (each through :func:`write_private`): the CA key, the
        coordinator's TLS and identity keys, and each holder's TLS and identity keys, for every holder directory
        present. Certificates (``*.pem`` but ``key.pem``) and the roster are public. Paths whether or not they exist;
        ``tests/transport/test_mtls.py`` checks that no other file of a fresh PKI holds a private key."""
        holders = sorted(int(d.name) for d in (self.root / "holders").glob("*") if d.name.isdigit())
        return [self.ca_key, self.server_key, self.server_identity,
                *(p for h in holders for p in (self.holder_key(h), self.holder_identity(h)))]


def write_private(path: Path, data: bytes) -> None:
    """Create ``path`` with mode 0600 from the first byte (no window with wider permissions)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _cert(subject_cn: str, key, issuer_cert, issuer_key, *, ca: bool, sans: list, server: bool) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    b = (x509.CertificateBuilder().subject_name(name)
         .issuer_name(issuer_cert.subject if issuer_cert else name)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
         .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if ca:
        b = b.add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
    else:
        b = b.add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        eku = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        b = b.add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key or key, hashes.SHA256())


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def make_demo_pki(out: str | Path, *, holders: int, server_names: tuple[str, ...] = (),
                  first_id: int = 1) -> Layout:
    """Create a fresh demo CA, server and ``holders`` holder credentials plus the roster (module doc)."""
    if not isinstance(holders, int) or isinstance(holders, bool):
        raise TypeError("holders must be an int")
    if not 1 <= holders <= 10_000:
        raise ValueError(f"holders must be in [1, 10000], got {holders}")
    if not isinstance(first_id, int) or not 1 <= first_id <= _MAX_ID - holders:
        raise ValueError("first_id must be a holder id >= 1")
    lay = Layout(out)
    if lay.root.exists() and any(lay.root.iterdir()):
        raise FileExistsError(f"{lay.root} exists and is not empty; keygen never overwrites keys")
    lay.root.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(lay.root, 0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("securefed demo CA", ca_key, None, None, ca=True, sans=[], server=False)
    write_private(lay.ca_key, _pem_key(ca_key))
    lay.ca_cert.write_bytes(_pem(ca))

    sans: list = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    for n in server_names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(n)))
        except ValueError:
            sans.append(x509.DNSName(n))
    skey = ec.generate_private_key(ec.SECP256R1())
    write_private(lay.server_key, _pem_key(skey))
    write_private(lay.server_identity, _pem_key(Ed25519PrivateKey.generate()))   # the coordinator's ledger key
    lay.server_cert.write_bytes(_pem(_cert("securefed coordinator", skey, ca, ca_key, ca=False, sans=sans, server=True)))

    identities = {}
    for hid in range(first_id, first_id + holders):
        d = lay.holder_dir(hid)
        hkey = ec.generate_private_key(ec.SECP256R1())
        cert = _cert(f"holder-{hid}", hkey, ca, ca_key, ca=False,
                     sans=[x509.UniformResourceIdentifier(f"{HOLDER_URI}{hid}")], server=False)
        write_private(lay.holder_key(hid), _pem_key(hkey))
        (d / "cert.pem").write_bytes(_pem(cert))
        (d / "ca.pem").write_bytes(_pem(ca))
        ident = Ed25519PrivateKey.generate()             # OS CSPRNG
        write_private(lay.holder_identity(hid), _pem_key(ident))
        identities[hid] = IdentityKey(ident)
    Roster.from_identities(identities).save(lay.roster)
    for d in [lay.root, *lay.root.rglob("*")]:
        if d.is_dir():
            os.chmod(d, 0o700)
    return lay


def load_identity(path: str | Path) -> IdentityKey:
    """A holder's Ed25519 identity from its PKCS#8 PEM file; refuses group/world-readable files."""
    p = Path(path)
    mode = p.stat().st_mode & 0o077
    if mode:
        raise PermissionError(f"{p} is readable by group/others (chmod 600 it)")
    key = serialization.load_pem_private_key(p.read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{p} does not hold an Ed25519 private key")
    return IdentityKey(key)


class TlsFilesError(ValueError):
    """A party's own TLS files cannot work (§7.1): one message naming the file and what to do."""


EXPIRY_WARNING_DAYS = 14


def check_tls_files(*, cert: Path, key: Path, ca: Path, now: dt.datetime | None = None) -> list[str]:
    """Before a party listens or connects (transport.md §7.1): its certificate is in its validity window, is
    issued (through the chain in ``cert``) by a certificate in ``ca`` that is in its own window, and its private
    key is the certificate's. Any of these failing would surface only as a failed TLS handshake at the peer, read
    as "no answer"; TlsFilesError here names it instead. Returns warnings: a certificate that expires within
    EXPIRY_WARNING_DAYS. A signature algorithm this check cannot verify is left to the TLS library (never refused
    here)."""
    from cryptography.exceptions import UnsupportedAlgorithm

    now = now or dt.datetime.now(dt.timezone.utc)
    for what, path, load in (("certificate", cert, x509.load_pem_x509_certificates),
                             ("CA certificate", ca, x509.load_pem_x509_certificates),
                             ("private key", key, lambda b: serialization.load_pem_private_key(b, password=None))):
        try:
            loaded = load(path.read_bytes())
        except (ValueError, TypeError, UnsupportedAlgorithm) as e:   # TypeError: an encrypted key (gRPC needs it clear)
            raise TlsFilesError(f"{path} is not a PEM {what} that TLS can use ({str(e).splitlines()[0][:120]})") from None
        if what == "certificate":
            chain = loaded
        elif what == "CA certificate":
            roots = loaded
        else:
            priv = loaded
    leaf = chain[0]

    def spki(k) -> bytes:
        return k.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if spki(priv.public_key()) != spki(leaf.public_key()):
        raise TlsFilesError(f"{key} is not the private key of the certificate {cert}: give the key the certificate "
                            "was issued for")

    def window(c: x509.Certificate, where: Path) -> str | None:
        if now < c.not_valid_before_utc:
            return (f"the certificate {c.subject.rfc4514_string()!r} in {where} is not valid before "
                    f"{c.not_valid_before_utc:%Y-%m-%d %H:%M} UTC (is this machine's clock right?)")
        if now > c.not_valid_after_utc:
            return (f"the certificate {c.subject.rfc4514_string()!r} in {where} expired on "
                    f"{c.not_valid_after_utc:%Y-%m-%d %H:%M} UTC: have it re-issued")
        return None

    def expiring(cs: list) -> list[str]:
        out = []
        for c, where in cs:
            left = c.not_valid_after_utc - now
            if left < dt.timedelta(days=EXPIRY_WARNING_DAYS):
                out.append(f"the certificate {c.subject.rfc4514_string()!r} in {where} expires on "
                           f"{c.not_valid_after_utc:%Y-%m-%d %H:%M} UTC, in {left.days} days: a run still going then "
                           "stops at its next connection")
        return out

    bad = window(leaf, cert)
    if bad:
        raise TlsFilesError(bad)

    # the paths leaf -> (intermediates of cert) -> a root of ca, each link's signature checked. Only the certificates
    # on a path are held to their validity window, as TLS does: a CA file may also hold a rotated-out, expired CA,
    # and a chain an expired cross-signature, that no path needs
    def paths(node: x509.Certificate, pool: list) -> Iterator[list]:
        for r in roots:
            if _issued_by(node, r):
                yield [(r, ca)]
        for c in pool:
            if _issued_by(node, c):
                for rest in paths(c, [p for p in pool if p is not c]):
                    yield [(c, cert), *rest]
    first_bad = None
    for path in paths(leaf, list(chain[1:])):
        bad = next((b for b in (window(c, w) for c, w in path) if b), None)
        if bad is None:
            return expiring([(leaf, cert), path[-1]])        # the certificate and its CA
        first_bad = first_bad or bad
    if first_bad:
        raise TlsFilesError(first_bad)
    if any(_issued_by(a, b) is None for a in chain for b in [*chain[1:], *roots]):
        # an algorithm this check cannot verify: the TLS library decides (the certificates sent are checked here)
        for c in chain[1:]:
            bad = window(c, cert)
            if bad:
                raise TlsFilesError(bad)
        return expiring([(leaf, cert)])
    raise TlsFilesError(f"the certificate {cert} is not issued by the CA in {ca}: this pki mixes two federations' "
                        "files (use the CA certificate the federation's certificates were issued by)")


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool | None:
    """cert's signature verifies under issuer's key (and names it as issuer); None: cannot be checked here."""
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm

    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError):
        return False
    except (UnsupportedAlgorithm, TypeError):
        return None
    return True


def holder_id_from_cert(pem: bytes) -> int:
    """The holder id a (TLS-verified) certificate names; ValueError if it names none or two."""
    cert = x509.load_pem_x509_certificate(pem)
    ids: set[int] = set()
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        for uri in san.get_values_for_type(x509.UniformResourceIdentifier):
            if uri.startswith(HOLDER_URI):
                ids.add(_parse_id(uri[len(HOLDER_URI):]))
    except x509.ExtensionNotFound:
        pass
    cns = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    cn_ids = {_parse_id(m.group(1)) for a in cns if (m := _CN_RE.match(str(a.value)))}
    if ids and cn_ids and ids != cn_ids:
        raise ValueError("certificate SAN and CN name different holders")
    ids = ids or cn_ids
    if len(ids) != 1:
        raise ValueError("certificate does not name exactly one holder")
    return ids.pop()


def _parse_id(s: str) -> int:
    if not s.isdigit() or len(s) > 10:
        raise ValueError("holder id in certificate is not a decimal integer")
    v = int(s)
    if not 1 <= v <= _MAX_ID:
        raise ValueError("holder id in certificate outside [1, 2^31-1]")
    return v
