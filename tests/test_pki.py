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


def test_production_certificate_names_the_servers_addresses_and_reissues_under_the_same_ca(tmp_path):
    from server.pki import certificate_names

    pki = make_server_pki(tmp_path, ["fl.example.org"], ["10.1.2.3"])
    assert {"fl.example.org", "10.1.2.3", "127.0.0.1", "localhost"} <= certificate_names(pki.server_cert)
    assert pki.ca_key.stat().st_mode & 0o077 == 0
    ca_before, cert_before = pki.ca_cert.read_bytes(), pki.server_cert.read_bytes()
    assert make_server_pki(tmp_path, ["fl.example.org"], []).server_cert.read_bytes() == cert_before  # covered
    make_server_pki(tmp_path, ["fl.example.org"], ["10.9.9.9"])  # a new address: re-issued by the same CA
    assert "10.9.9.9" in certificate_names(pki.server_cert) and pki.ca_cert.read_bytes() == ca_before
    ca = x509.load_pem_x509_certificate(ca_before)
    x509.load_pem_x509_certificate(pki.server_cert.read_bytes()).verify_directly_issued_by(ca)


def test_bad_names_and_a_lost_ca_key_are_clear_errors(tmp_path):
    import pytest

    from server.pki import PkiError

    with pytest.raises(PkiError, match="'fl.example' is not an IP address"):
        make_server_pki(tmp_path / "a", [], ["fl.example"])
    with pytest.raises(PkiError, match="'a b' is not a host name"):
        make_server_pki(tmp_path / "b", ["a b"], [])
    pki = make_server_pki(tmp_path / "c")
    pki.ca_key.unlink()
    with pytest.raises(PkiError, match="ca.key was not kept"):
        make_server_pki(tmp_path / "c", ["new.example"], [])


def test_device_and_server_commands_fail_in_one_line(tmp_path, capsys):
    from fedpic.cli import main

    assert main(["device", "keygen", "--key", str(tmp_path / "k" / "me")]) == 0
    assert (tmp_path / "k" / "me").stat().st_mode & 0o077 == 0 and (tmp_path / "k" / "me.pub").is_file()
    before = (tmp_path / "k" / "me.pub").read_bytes()
    assert main(["device", "keygen", "--key", str(tmp_path / "k" / "me")]) == 0  # kept, never overwritten
    assert (tmp_path / "k" / "me.pub").read_bytes() == before
    capsys.readouterr()
    assert main(["device", "join", "--superlink", "10.0.0.1:9093", "--ca", str(tmp_path / "nope.crt"), "--key",
                 str(tmp_path / "k" / "me"), "--data", str(tmp_path), "--user", "me", "--state",
                 str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.crt: no such CA certificate file" in err
    assert main(["server", "enroll", "--dir", str(tmp_path / "srv"), str(tmp_path / "missing.pub")]) == 2
    assert "missing.pub: no such public key file" in capsys.readouterr().err
    assert main(["server", "run", "--dir", str(tmp_path / "srv")]) == 2
    assert "no certificates" in capsys.readouterr().err
