"""A HelixCluster's TLS: the cluster CA and member certificate in a Secret, and how pods mount it.

Every hop that carries requests or activations (front end -> stages, stage -> stage, the
data channel) uses mutual TLS with one certificate per cluster, from a Secret in
cert-manager's layout (tls.crt, tls.key, ca.crt). `spec.security.tlsSecret` names an
existing one (a cert-manager Certificate with usages server auth and client auth and
`MEMBER_NAME` among its dnsNames, as peers check servers against that name); without it the
operator issues a self-signed CA and a certificate into `<cluster>-tls`, once, owned by the
HelixCluster. The front end's optional client-side material (API keys, TLS for clients)
comes from Secrets the spec names. The data plane reads all of it through HELIX_* settings.

The issuing is written here rather than shared with the data plane's `helix up` (which
issues its own throwaway CA), because the operator imports no data-plane module.
"""

import base64
import datetime
from collections.abc import Mapping
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from helix_operator.api import names
from helix_operator.api.meta import child_metadata, dns_name
from helix_operator.api.spec import ClusterSpec

MEMBER_NAME = "helix-member"  # helix_worker.security.issuing.MEMBER_NAME: what peers check servers against
CERT_DAYS = 3650
TLS_DIR = "/var/run/helix/tls"
API_KEYS_DIR = "/var/run/helix/api-keys"
CLIENT_TLS_DIR = "/var/run/helix/client-tls"
TLS_VOLUME, API_KEYS_VOLUME, CLIENT_TLS_VOLUME = "cluster-tls", "api-keys", "client-tls"


def tls_secret_name(cluster: str, spec: ClusterSpec) -> str:
    """The Secret pods mount: the one the spec names, else the one the operator issues."""
    return spec.security.tls_secret or dns_name(cluster, "tls")


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "helix"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def issue_cluster_tls(cluster: str, namespace: str) -> dict[str, bytes]:
    """A fresh CA (its key is dropped: nothing else is ever signed) and one member certificate
    for serving and dialling, valid for `CERT_DAYS`; PEM files by Secret key."""
    now = datetime.datetime.now(datetime.UTC)
    validity = {"not_valid_before": now - datetime.timedelta(minutes=5),
                "not_valid_after": now + datetime.timedelta(days=CERT_DAYS)}
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(f"helix {namespace}/{cluster} CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(validity["not_valid_before"])
          .not_valid_after(validity["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    workers = f"{dns_name(cluster, 'workers')}.{namespace}.svc"
    dns = [MEMBER_NAME, f"*.{workers}", f"*.{workers}.cluster.local"]
    cert = (x509.CertificateBuilder().subject_name(_name(f"helix {namespace}/{cluster}")).issuer_name(ca_name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(validity["not_valid_before"]).not_valid_after(validity["not_valid_after"])
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return {"tls.crt": cert.public_bytes(serialization.Encoding.PEM), "tls.key": _pem_key(key),
            "ca.crt": ca.public_bytes(serialization.Encoding.PEM)}


def build_tls_secret(owner: Mapping[str, Any], spec: ClusterSpec) -> dict[str, Any]:
    """The issued Secret (kubernetes.io/tls with ca.crt, as cert-manager writes it)."""
    cluster, namespace = owner["metadata"]["name"], owner["metadata"]["namespace"]
    files = issue_cluster_tls(cluster, namespace)
    return {"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
            "metadata": child_metadata(owner, tls_secret_name(cluster, spec), names.COMPONENT_TLS),
            "data": {key: base64.b64encode(value).decode() for key, value in files.items()}}


def _secret_volume(name: str, secret: str) -> dict[str, Any]:
    return {"name": name, "secret": {"secretName": secret}}


def _mount(name: str, path: str) -> dict[str, Any]:
    return {"name": name, "mountPath": path, "readOnly": True}


def cluster_tls_volume(cluster: str, spec: ClusterSpec) -> dict[str, Any]:
    return _secret_volume(TLS_VOLUME, tls_secret_name(cluster, spec))


def cluster_tls_mount() -> dict[str, Any]:
    return _mount(TLS_VOLUME, TLS_DIR)


def cluster_tls_env() -> list[dict[str, str]]:
    return [{"name": "HELIX_TLS_CERT", "value": f"{TLS_DIR}/tls.crt"},
            {"name": "HELIX_TLS_KEY", "value": f"{TLS_DIR}/tls.key"},
            {"name": "HELIX_TLS_CA", "value": f"{TLS_DIR}/ca.crt"}]


def client_side(spec: ClusterSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, str]]]:
    """Volumes, mounts and env of the front end's client-side security: API keys and client TLS."""
    security = spec.security
    volumes, mounts, env = [], [], []
    if security.api_keys_secret:
        volumes.append(_secret_volume(API_KEYS_VOLUME, security.api_keys_secret))
        mounts.append(_mount(API_KEYS_VOLUME, API_KEYS_DIR))
        env.append({"name": "HELIX_API_KEYS_FILE", "value": f"{API_KEYS_DIR}/{security.api_keys_key}"})
    if security.client_tls_secret:
        volumes.append(_secret_volume(CLIENT_TLS_VOLUME, security.client_tls_secret))
        mounts.append(_mount(CLIENT_TLS_VOLUME, CLIENT_TLS_DIR))
        env += [{"name": "HELIX_CLIENT_TLS_CERT", "value": f"{CLIENT_TLS_DIR}/tls.crt"},
                {"name": "HELIX_CLIENT_TLS_KEY", "value": f"{CLIENT_TLS_DIR}/tls.key"}]
    return volumes, mounts, env
