"""TLS and mutual TLS with certificates made by the test (cryptography)."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from conftest import Daemon
from jarvis_memory import NO_RETRY, Client, Unavailable


def make_certificate(
    folder: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *, ca: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(x509.SubjectAlternativeName([
            x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False)
    certificate = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (folder / f"{name}.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    (folder / f"{name}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    return certificate, key


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ca = make_certificate(tmp_path, "ca", None, ca=True)
    make_certificate(tmp_path, "server", ca)
    make_certificate(tmp_path, "client", ca)
    make_certificate(tmp_path, "stranger", make_certificate(tmp_path, "other-ca", None, ca=True))
    return tmp_path


def test_tls(pki: Path) -> None:
    d = Daemon(pki / "jarvis.db", "--tls-cert", str(pki / "server.crt"),
               "--tls-key", str(pki / "server.key")).start()
    try:
        assert "tls on" in d.output
        with Client(d.addr, ca_file=str(pki / "ca.crt")) as jm:
            m = jm.add_memory("sent over TLS", category="fact", source="user_explicit")
            assert jm.get_memory(m.id).content == "sent over TLS"
        with Client(d.addr, retry=NO_RETRY, timeout=5) as plain, pytest.raises(Unavailable):
            plain.list_memories()  # plaintext to a TLS port
        with Client(d.addr, ca_file=str(pki / "other-ca.crt"), retry=NO_RETRY,
                    timeout=5) as untrusting, pytest.raises(Unavailable):
            untrusting.list_memories()  # the server's certificate is not trusted
    finally:
        assert d.stop() == 0


def test_mutual_tls(pki: Path) -> None:
    d = Daemon(pki / "jarvis.db", "--tls-cert", str(pki / "server.crt"),
               "--tls-key", str(pki / "server.key"), "--tls-client-ca", str(pki / "ca.crt")).start()
    try:
        assert "tls mutual" in d.output
        with Client(d.addr, ca_file=str(pki / "ca.crt"), cert_file=str(pki / "client.crt"),
                    key_file=str(pki / "client.key")) as jm:
            assert jm.list_memories() == []
        for cert in (None, "stranger"):
            kwargs = {} if cert is None else {"cert_file": str(pki / f"{cert}.crt"),
                                              "key_file": str(pki / f"{cert}.key")}
            with Client(d.addr, ca_file=str(pki / "ca.crt"), retry=NO_RETRY, timeout=5,
                        **kwargs) as jm, pytest.raises(Unavailable):  # type: ignore[arg-type]
                jm.list_memories()
    finally:
        assert d.stop() == 0


def test_tls_flags_are_checked(tmp_path: Path) -> None:
    from conftest import run_daemon_expecting_failure

    result = run_daemon_expecting_failure(tmp_path / "jarvis.db", "--tls-cert", "x.crt")
    assert result.returncode == 2 and "needs both --tls-cert and --tls-key" in result.stderr
    result = run_daemon_expecting_failure(tmp_path / "jarvis.db", "--tls-cert", "missing.crt",
                                          "--tls-key", "missing.key")
    assert result.returncode == 2 and "cannot read a TLS file" in result.stderr
