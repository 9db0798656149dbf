"""Issue a cluster's certificate authority and the certificates it signs (`cryptography`).

One CA per cluster; every member (worker, front end) holds a certificate it signed, usable
as both TLS server and client, so that each hop is mutually authenticated. Every member
certificate also names `MEMBER_NAME`: peers check servers against that name rather than
the address they dialled, because one address may be a pod's DNS name, a Service's, or
127.0.0.1 behind a local port, while membership is what the CA's signature proves.
"""

import datetime
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

MEMBER_NAME = "helix-member"
CERT_FILE, KEY_FILE, CA_FILE = "tls.crt", "tls.key", "ca.crt"  # cert-manager's Secret layout


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key, PEM-encoded."""

    cert_pem: bytes
    key_pem: bytes


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "helix"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             days: int) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days)))


def new_ca(common_name: str, days: int = 3650) -> Issued:
    """A self-signed CA that may sign member certificates only (path length 0)."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(_name(common_name), _name(common_name), key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def issue(ca: Issued, common_name: str, dns_names: Sequence[str] = (), ips: Sequence[str] = (),
          days: int = 365) -> Issued:
    """A member certificate signed by `ca`, for TLS servers and clients, naming `MEMBER_NAME`,
    `dns_names` and `ips`."""
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem)
    ca_key = serialization.load_pem_private_key(ca.key_pem, password=None)
    ca_public = ca_cert.public_key()
    # The keys that sign with SHA-256 (the CA new_ca makes is EC).
    if not isinstance(ca_key, (ec.EllipticCurvePrivateKey, rsa.RSAPrivateKey, dsa.DSAPrivateKey)) \
            or not isinstance(ca_public, (ec.EllipticCurvePublicKey, rsa.RSAPublicKey, dsa.DSAPublicKey)):
        raise ValueError(f"the CA's key ({type(ca_key).__name__}) cannot sign certificates with SHA-256")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dict.fromkeys([MEMBER_NAME, *dns_names])]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    cert = (_builder(_name(common_name), ca_cert.subject, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def write_bundle(directory: Path, ca: Issued, member: Issued) -> Path:
    """Write `member`'s certificate, key (owner-only) and the CA certificate as tls.crt, tls.key
    and ca.crt in `directory`; returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / CERT_FILE).write_bytes(member.cert_pem)
    (directory / CA_FILE).write_bytes(ca.cert_pem)
    key = directory / KEY_FILE
    key.touch(mode=0o600, exist_ok=True)
    os.chmod(key, 0o600)
    key.write_bytes(member.key_pem)
    return directory
