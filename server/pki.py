"""Keys and certificates for a local deployment: a CA, the SuperLink's TLS certificate, device keys.

Why fedpic makes them itself: a deployment on this machine needs TLS (Flower refuses SuperNode
authentication without it) and one key pair per device, and asking users to drive openssl by
hand is where setups go wrong. The CA signs a server certificate whose subject alternative
names are the loopback names (127.0.0.1, ::1, localhost) only. Device keys are EC P-384 in
OpenSSH format: Flower 1.41 loads the private key with `load_ssh_private_key` and
`flwr supernode register` wants an OpenSSH EC public key on a NIST curve.
Everything is written with mode 0600 for private keys; existing files are kept, so a
restarted deployment keeps the identities its SuperLink registered.
"""
from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from pic_core.atomic import atomic_open

LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = ("127.0.0.1", "::1")
VALID_DAYS = 365


@dataclass(frozen=True)
class ServerPki:
    ca_cert: Path
    server_cert: Path
    server_key: Path


@dataclass(frozen=True)
class DeviceKey:
    name: str
    private_key: Path
    public_key: Path


def _write(path: Path, data: bytes, private: bool) -> Path:
    """Atomic write; the temp file is created 0600 (mkstemp), so a private key is never readable
    by others, and public files are opened up to 0644 before the rename."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
        if not private:
            os.fchmod(handle.fileno(), 0o644)
    return path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedpic local deployment"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _certificate(subject: x509.Name, issuer: x509.Name, public_key, signer, ca: bool) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
               .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
               .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=0 if ca else None), critical=True))
    if ca:
        return builder.add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                   content_commitment=False, key_encipherment=False,
                                                   data_encipherment=False, key_agreement=False,
                                                   encipher_only=False, decipher_only=False), critical=True)
    alt = [x509.DNSName(n) for n in LOOPBACK_NAMES] + [x509.IPAddress(ipaddress.ip_address(a)) for a in LOOPBACK_IPS]
    return (builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))


def make_server_pki(folder: Path) -> ServerPki:
    """CA + SuperLink certificate in `folder` (created once; reused when present)."""
    folder = Path(folder)
    pki = ServerPki(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    if all(p.is_file() for p in (pki.ca_cert, pki.server_cert, pki.server_key)):
        return pki
    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = _name("fedpic local CA")
    ca_cert = _certificate(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True).sign(ca_key, hashes.SHA384())
    server_key = ec.generate_private_key(ec.SECP384R1())
    server_cert = _certificate(_name("localhost"), ca_name, server_key.public_key(), ca_key, ca=False) \
        .sign(ca_key, hashes.SHA384())
    _write(pki.server_key, _pem_key(server_key), private=True)
    _write(pki.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    _write(pki.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    return pki


def make_device_key(folder: Path, name: str) -> DeviceKey:
    """An EC P-384 key pair in OpenSSH format for one SuperNode (reused when present)."""
    key = DeviceKey(name, Path(folder) / name, Path(folder) / f"{name}.pub")
    if key.private_key.is_file() and key.public_key.is_file():
        return key
    private = ec.generate_private_key(ec.SECP384R1())
    _write(key.private_key, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                  serialization.NoEncryption()), private=True)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(key.public_key, public + f" fedpic-{name}\n".encode(), private=False)
    return key
