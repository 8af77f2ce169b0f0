"""TLS material for the central daemons (routerd, controllerd): load it, or create it once.

The daemons use `load_or_issue`: when their certificate and key do not exist yet,
a leaf certificate is issued by the *lab CA* (created once next to it, `ca.crt`
and `ca.key` mode 0600, under a lock so controllerd and routerd starting together
make one CA). Every controller and router of the lab is then verified by that one
CA, which is what `jumpstarter admin` writes into client and exporter configs.
Certificates: EC P-256, valid 10 years, subject alternative names for the given
host names and IP addresses plus `localhost`, `127.0.0.1` and `::1`.
`load_or_create` makes a self-signed pair (its own CA) for a lone daemon or a test.
Ten years rather than upstream's one: the CA is copied into every client and
exporter config, and a silent yearly expiry would break all of them at once;
rotate by deleting the files (or configuring real certificates) instead.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import hashlib
import ipaddress
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from jumpstarter.errors import ConfigError
from jumpstarter.files import make_dirs, write_atomic

VALIDITY = datetime.timedelta(days=3650)
ALWAYS_NAMES = ("localhost", "127.0.0.1", "::1")


def load_or_create(cert_path: str, key_path: str, hostnames: Iterable[str]) -> tuple[bytes, bytes]:
    """The PEM certificate and key at these paths, generating a self-signed pair if both are missing.

    A lone certificate or key is an error (nothing is overwritten); so is a key
    that does not belong to the certificate.
    """
    have_cert, have_key = os.path.exists(cert_path), os.path.exists(key_path)
    if not have_cert and not have_key:
        cert_pem, key_pem = generate_self_signed(hostnames)
        _write_atomic(key_path, key_pem, 0o600)
        _write_atomic(cert_path, cert_pem, 0o644)
        return cert_pem, key_pem
    if have_cert != have_key:
        present, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
        raise ConfigError(
            f"{missing}: missing while {present} exists; restore it, or remove both to generate a new pair"
        )
    cert_pem, key_pem = _read(cert_path), _read(key_path)
    check_pair(cert_pem, key_pem, cert_path, key_path)
    return cert_pem, key_pem


def generate_self_signed(hostnames: Iterable[str]) -> tuple[bytes, bytes]:
    """A new self-signed certificate and its private key (PEM, PKCS#8, unencrypted)."""
    names = _names(hostnames)
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _subject("Jumpstarter (self-signed)", names[0])
    cert = (
        _builder(subject, subject, key.public_key(), key.public_key())
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


@dataclass(frozen=True)
class LabCA:
    """The lab CA's certificate file and key file (PEM); `cert_pem` is what configs carry."""

    cert_path: str
    key_path: str
    cert_pem: bytes
    key_pem: bytes


def generate_ca() -> tuple[bytes, bytes]:
    """A new lab CA: self-signed, CA:TRUE with path length 0 (it signs server certificates only)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = _subject("Jumpstarter lab CA", "Jumpstarter lab CA")
    cert = (
        _builder(subject, subject, key.public_key(), key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(ca=True), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def load_or_create_ca(cert_path: str, key_path: str) -> LabCA:
    """The lab CA at these paths, created if both are missing; a lock makes concurrent starts agree."""
    _makedirs(os.path.dirname(os.path.abspath(key_path)))
    with _locked(key_path + ".lock"):
        have_cert, have_key = os.path.exists(cert_path), os.path.exists(key_path)
        if not have_cert and not have_key:
            cert_pem, key_pem = generate_ca()
            _write_atomic(key_path, key_pem, 0o600)
            _write_atomic(cert_path, cert_pem, 0o644)
        elif have_cert != have_key:
            present, missing = (cert_path, key_path) if have_cert else (key_path, cert_path)
            raise ConfigError(
                f"{missing}: missing while {present} exists: cannot sign a certificate for this daemon;"
                " restore it, or configure tls.cert and tls.key with certificates you made"
            )
        else:
            cert_pem, key_pem = _read(cert_path), _read(key_path)
            check_pair(cert_pem, key_pem, cert_path, key_path)
    return LabCA(cert_path, key_path, cert_pem, key_pem)


def issue(ca: LabCA, hostnames: Iterable[str]) -> tuple[bytes, bytes]:
    """A new server certificate signed by the lab CA for these names, and its private key (PEM)."""
    names = _names(hostnames)
    issuer = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{ca.key_path}: the lab CA key must be an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        _builder(_subject("Jumpstarter", names[0]), issuer.subject, key.public_key(), ca_key.public_key())
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(ca=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def load_or_issue(
    cert_path: str, key_path: str, hostnames: Iterable[str], ca_cert: str, ca_key: str
) -> tuple[bytes, bytes, bool]:
    """(certificate, key, generated): the files at these paths, or a pair issued by the lab CA.

    Existing files are used as they are (an administrator's own certificates keep
    working); a lone certificate or key is an error, as in `load_or_create`.
    """
    have_cert, have_key = os.path.exists(cert_path), os.path.exists(key_path)
    if have_cert or have_key:
        return (*load_or_create(cert_path, key_path, hostnames), False)
    cert_pem, key_pem = issue(load_or_create_ca(ca_cert, ca_key), hostnames)
    _write_atomic(key_path, key_pem, 0o600)
    _write_atomic(cert_path, cert_pem, 0o644)
    return cert_pem, key_pem, True


def trust_anchor(cert_pem: bytes, ca_path: str) -> bytes:
    """The CA clients must trust for this certificate: the CA file if there is one, else the certificate."""
    return _read(ca_path) if os.path.exists(ca_path) else cert_pem


def signed_by(cert_pem: bytes, ca_pem: bytes) -> bool:
    """Whether `ca_pem` (one of the PEM certificates in it) issued `cert_pem`, or is that certificate."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    for ca in x509.load_pem_x509_certificates(ca_pem):
        if ca == cert:
            return True
        with contextlib.suppress(ValueError, TypeError, InvalidSignature):
            cert.verify_directly_issued_by(ca)
            return True
    return False


def check_pair(cert_pem: bytes, key_pem: bytes, cert_path: str = "<cert>", key_path: str = "<key>") -> None:
    """Raise ConfigError unless `key_pem` is the private key of `cert_pem`."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise ConfigError(f"{cert_path}: not a PEM certificate: {exc}") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{key_path}: not an unencrypted PEM private key: {exc}") from None
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if key.public_key().public_bytes(serialization.Encoding.DER, spki) != cert.public_key().public_bytes(
        serialization.Encoding.DER, spki
    ):
        raise ConfigError(f"{key_path}: this key does not belong to the certificate {cert_path}")


def describe(cert_pem: bytes) -> dict[str, object]:
    """Facts worth logging about a certificate: names, expiry, SHA-256 fingerprint, self-signed."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return {
        "names": certificate_names(cert_pem),
        "not_after": cert.not_valid_after_utc.isoformat(),
        "sha256": hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest(),
        "self_signed": cert.issuer == cert.subject,
    }


def certificate_names(cert_pem: bytes) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for (its SANs)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    names: list[str] = list(san.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    return names


def covers(cert_pem: bytes, host: str) -> bool:
    """Whether a client connecting to `host` would accept this certificate's names."""
    host = host.strip("[]").lower()
    for name in certificate_names(cert_pem):
        name = name.lower()
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:]:
            return True
    return False


def server_credentials(cert_pem: bytes, key_pem: bytes) -> grpc.ServerCredentials:
    """gRPC server credentials for this pair (no client certificates)."""
    return grpc.ssl_server_credentials([(key_pem, cert_pem)])


def _names(hostnames: Iterable[str]) -> list[str]:
    return _unique([*(h for h in hostnames if h), *ALWAYS_NAMES])


def _subject(organization: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64]),
        ]
    )


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public: ec.EllipticCurvePublicKey,
    issuer_public: ec.EllipticCurvePublicKey,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # tolerate clients with slow clocks
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public), critical=False)
    )


def _key_usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        key_cert_sign=ca,
        crl_sign=ca,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        encipher_only=False,
        decipher_only=False,
    )


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@contextlib.contextmanager
def _locked(path: str) -> Iterator[None]:
    try:
        handle = open(path, "a")  # noqa: SIM115 - held for the duration of the block
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create: {exc.strerror or exc}") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _makedirs(path: str) -> None:
    try:
        make_dirs(path, 0o700)  # the CA key's directory: its owner only
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create: {exc.strerror or exc}") from None


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name.strip("[]")))
    except ValueError:
        return x509.DNSName(name)


def _unique(names: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for name in names:
        seen.setdefault(name.strip("[]").lower(), None)
    return list(seen)


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read(1024 * 1024)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _write_atomic(path: str, data: bytes, mode: int) -> None:
    try:
        write_atomic(path, data, mode, dir_mode=0o700)  # the key's directory: its owner only
    except OSError as exc:
        raise ConfigError(f"{path}: cannot create: {exc.strerror or exc}") from None
