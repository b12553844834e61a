"""TLS material for the gRPC transport, made with ``cryptography``: a private CA and a server certificate.

``secagg keys`` uses this to set up a deployment (or a test) in one step. The CA is as trustworthy
as the place its key is kept: for a throwaway test CA, delete the key after issuing. Keys are ECDSA
P-256 (supported by every gRPC TLS stack); certificates carry the server's DNS names and IP
addresses as subjectAltNames, which gRPC checks against the address a client dials.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from secagg.errors import ConfigError

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


@dataclass(frozen=True)
class TLSFiles:
    ca_cert: Path      # give to every client (--ca-cert)
    server_cert: Path  # the server's certificate chain (--tls-cert)
    server_key: Path   # the server's private key (--tls-key), mode 0600


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def make_tls_files(out_dir: str | Path, hosts: tuple[str, ...] = DEFAULT_HOSTS, *,
                   days: int = 365, keep_ca_key: bool = False) -> TLSFiles:
    """Create a CA and a server certificate for ``hosts`` in ``out_dir``; return their paths.

    ``days``: validity (>= 1). ``keep_ca_key``: also write ``ca.key`` (to issue more certificates
    later); by default the CA key is discarded, so nobody can issue another certificate under it.
    """
    if days < 1:
        raise ConfigError(f"days: must be >= 1, got {days}")
    if not hosts:
        raise ConfigError("hosts: the server certificate needs at least one host name or address")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (x509.CertificateBuilder().subject_name(_name("secagg deployment CA"))
               .issuer_name(_name("secagg deployment CA")).public_key(ca_key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                            content_commitment=False, key_encipherment=False,
                                            data_encipherment=False, key_agreement=False,
                                            encipher_only=False, decipher_only=False), critical=True)
               .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(hosts[0])).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = TLSFiles(out / "ca.pem", out / "server.pem", out / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(files.server_key, key)
    if keep_ca_key:
        _write_private(out / "ca.key", ca_key)
    return files


def _write_private(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # O_CREAT's mode applies to a new file only: tighten an existing one too
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
