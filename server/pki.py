"""Keys and certificates for a local deployment: a CA, the SuperLink's TLS certificate, device keys.

Why fedpic makes them itself: a deployment on this machine needs TLS (Flower refuses SuperNode
authentication without it) and one key pair per device, and asking users to drive openssl by
hand is where setups go wrong. The CA signs a server certificate whose subject alternative
names are the loopback names (127.0.0.1, ::1, localhost) plus the host names and addresses a
production server is reached at (`fedpic server start --name/--address`); the CA key is kept
(0600) so the server certificate can be re-issued for new names without new trust roots on
the devices. Device keys are EC P-384 in
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
from typing import Sequence

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

    @property
    def ca_key(self) -> Path:
        return self.ca_cert.with_suffix(".key")


class PkiError(ValueError):
    """Certificates that cannot serve the names asked for (e.g. a CA whose key was not kept)."""


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


def _alt_names(names: Sequence[str], addresses: Sequence[str]) -> list[x509.GeneralName]:
    dns = list(dict.fromkeys([*LOOPBACK_NAMES, *names]))
    ips = []
    for text in dict.fromkeys([*LOOPBACK_IPS, *addresses]):
        try:
            ips.append(ipaddress.ip_address(text))
        except ValueError:
            raise PkiError(f"--address {text!r} is not an IP address (give host names with --name)") from None
    for name in dns:
        if not name or any(c.isspace() or c in "/:@" for c in name):
            raise PkiError(f"--name {name!r} is not a host name")
    return [x509.DNSName(n) for n in dns] + [x509.IPAddress(a) for a in ips]


def _certificate(subject: x509.Name, issuer: x509.Name, public_key, ca: bool,
                 alt: Sequence[x509.GeneralName] = ()) -> x509.CertificateBuilder:
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
    return (builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False))


def certificate_names(path: Path) -> set[str]:
    """The DNS names and IP addresses a certificate is valid for."""
    cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return set(alt.get_values_for_type(x509.DNSName)) | {str(a) for a in alt.get_values_for_type(x509.IPAddress)}


def _load_ca_key(path: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError(f"{path}: not an EC private key")
    return key


def make_server_pki(folder: Path, names: Sequence[str] = (), addresses: Sequence[str] = ()) -> ServerPki:
    """CA + SuperLink certificate in `folder`, valid for loopback plus `names`/`addresses`.

    Existing files are reused while the certificate covers every name asked for; otherwise the
    server certificate is re-issued by the kept CA key (devices keep trusting the same ca.crt).
    """
    folder = Path(folder)
    pki = ServerPki(folder / "ca.crt", folder / "server.pem", folder / "server.key")
    alt = _alt_names(names, addresses)
    wanted = {str(v.value) for v in alt}
    have_all = all(p.is_file() for p in (pki.ca_cert, pki.server_cert, pki.server_key))
    if have_all and wanted <= certificate_names(pki.server_cert):
        return pki
    if pki.ca_cert.is_file():
        if not pki.ca_key.is_file():
            raise PkiError(f"{pki.server_cert} does not cover {sorted(wanted - certificate_names(pki.server_cert))} "
                           f"and {pki.ca_key} was not kept: use a new folder (devices then need the new ca.crt)")
        ca_key = _load_ca_key(pki.ca_key)
        ca_cert = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
        ca_name = ca_cert.subject
    else:
        ca_key = ec.generate_private_key(ec.SECP384R1())
        ca_name = _name("fedpic local CA")
        ca_cert = _certificate(ca_name, ca_name, ca_key.public_key(), ca=True).sign(ca_key, hashes.SHA384())
        _write(pki.ca_key, _pem_key(ca_key), private=True)
    server_key = ec.generate_private_key(ec.SECP384R1())
    common = next((n for n in names), "localhost")
    server_cert = _certificate(_name(common), ca_name, server_key.public_key(), ca=False, alt=alt) \
        .sign(ca_key, hashes.SHA384())
    _write(pki.server_key, _pem_key(server_key), private=True)
    _write(pki.server_cert, server_cert.public_bytes(serialization.Encoding.PEM), private=False)
    if not pki.ca_cert.is_file():
        _write(pki.ca_cert, ca_cert.public_bytes(serialization.Encoding.PEM), private=False)
    return pki


def make_device_key(folder: Path, name: str) -> DeviceKey:
    """An EC P-384 key pair in OpenSSH format for one SuperNode (reused when present)."""
    return device_key_at(Path(folder) / name)


def device_key_at(private_key: Path) -> DeviceKey:
    """The key pair `private_key` + `private_key.pub` (`fedpic device keygen`), made when absent."""
    private_key = Path(private_key)
    key = DeviceKey(private_key.name, private_key, private_key.with_name(private_key.name + ".pub"))
    name = key.name
    key.private_key.parent.mkdir(parents=True, exist_ok=True)
    if key.private_key.is_file() and key.public_key.is_file():
        return key
    private = ec.generate_private_key(ec.SECP384R1())
    _write(key.private_key, private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                  serialization.NoEncryption()), private=True)
    public = private.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    _write(key.public_key, public + f" fedpic-{name}\n".encode(), private=False)
    return key
