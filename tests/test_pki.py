"""Certificates and device keys of `fedpic deploy`: loopback-only, CA-signed, in Flower's formats."""
from __future__ import annotations

import ipaddress

from cryptography import x509
from cryptography.hazmat.primitives.serialization import load_ssh_private_key
from flwr.cli.supernode.register import try_load_public_key

from server.pki import make_device_key, make_server_pki


def test_server_certificate_is_signed_by_the_ca_for_loopback_only(tmp_path):
    pki = make_server_pki(tmp_path)
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"localhost"}
    assert all(ip.is_loopback for ip in san.get_values_for_type(x509.IPAddress))
    assert ipaddress.ip_address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert pki.server_key.stat().st_mode & 0o077 == 0


def test_device_keys_load_with_flowers_own_loaders_and_are_reused(tmp_path):
    key = make_device_key(tmp_path, "device0")
    assert try_load_public_key(key.public_key)  # what `flwr supernode register` accepts
    load_ssh_private_key(key.private_key.read_bytes(), password=None)  # what flower-supernode loads
    assert key.private_key.stat().st_mode & 0o077 == 0
    before = key.public_key.read_bytes()
    assert make_device_key(tmp_path, "device0").public_key.read_bytes() == before
    assert make_device_key(tmp_path, "device1").public_key.read_bytes() != before
