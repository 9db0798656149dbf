"""The cluster's TLS Secret (issued once when the spec names none) and how worker and front-end
pods mount it, with the front end's API keys and client TLS; the issued files work as the
data plane's mutual TLS."""

import base64
import socket
import threading
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from opkit import fleet_spec
from test_manifests import OWNER, PLAN

from helix_operator.api.spec import parse_spec
from helix_operator.children import certificates
from helix_operator.children.certificates import build_tls_secret
from helix_operator.children.frontend import build_frontend_deployment
from helix_operator.children.workers import Assignment, build_worker_pod, template_hash
from helix_operator.control.kube import Ref
from helix_operator.control.reconcile import ensure_tls_secret
from helix_worker.envs import Settings
from helix_worker.security import issuing
from helix_worker.security.tls import cluster_tls

TLS_ENV = {"HELIX_TLS_CERT": "/var/run/helix/tls/tls.crt", "HELIX_TLS_KEY": "/var/run/helix/tls/tls.key",
           "HELIX_TLS_CA": "/var/run/helix/tls/ca.crt"}


def _files(secret: dict) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in secret["data"].items()}


def test_the_issued_secret_holds_a_member_certificate_its_ca_signed() -> None:
    secret = build_tls_secret(OWNER, parse_spec(fleet_spec()))
    assert (secret["kind"], secret["type"], secret["metadata"]["name"]) == ("Secret", "kubernetes.io/tls", "llama-tls")
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    files = _files(secret)
    assert set(files) == {"tls.crt", "tls.key", "ca.crt"}
    cert, ca = x509.load_pem_x509_certificate(files["tls.crt"]), x509.load_pem_x509_certificate(files["ca.crt"])
    cert.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert certificates.MEMBER_NAME == issuing.MEMBER_NAME and certificates.MEMBER_NAME in names
    assert "*.llama-workers.inference.svc" in names
    usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH} <= set(usages)
    assert _files(build_tls_secret(OWNER, parse_spec(fleet_spec())))["ca.crt"] != files["ca.crt"], "one CA per issue"


def test_the_issued_files_serve_the_data_planes_mutual_tls(tmp_path: Path) -> None:
    for key, value in _files(build_tls_secret(OWNER, parse_spec(fleet_spec()))).items():
        (tmp_path / key).write_bytes(value)
    tls = cluster_tls(Settings(tls_cert=str(tmp_path / "tls.crt"), tls_key=str(tmp_path / "tls.key"),
                               tls_ca=str(tmp_path / "ca.crt")))
    server_end, client_end = socket.socketpair()
    server = tls.server_context().wrap_socket(server_end, server_side=True, do_handshake_on_connect=False)
    client = tls.client_context().wrap_socket(client_end, server_hostname=issuing.MEMBER_NAME,
                                              do_handshake_on_connect=False)
    handshake = threading.Thread(target=server.do_handshake)
    handshake.start()
    client.do_handshake()
    handshake.join(10)
    assert server.getpeercert()["subject"] and client.version() in ("TLSv1.2", "TLSv1.3")
    server.close()
    client.close()


class _Kube:
    """Records what `ensure_tls_secret` reads and creates."""

    def __init__(self, existing: set[str]) -> None:
        self.existing, self.created = existing, []

    async def get(self, ref: Ref) -> dict | None:
        return {"metadata": {"name": ref.name}} if ref.name in self.existing else None

    async def create_missing(self, obj: dict) -> None:
        self.created.append(obj)


async def test_the_secret_is_issued_once_and_never_when_the_spec_names_one() -> None:
    spec = parse_spec(fleet_spec())
    kube = _Kube(set())
    await ensure_tls_secret(kube, OWNER, spec)
    assert [s["metadata"]["name"] for s in kube.created] == ["llama-tls"]
    kube = _Kube({"llama-tls"})
    await ensure_tls_secret(kube, OWNER, spec)
    assert kube.created == [], "an issued Secret is kept: pods trust its CA"
    raw = fleet_spec()
    raw["security"] = {"tlsSecret": {"name": "from-cert-manager"}}
    kube = _Kube(set())
    await ensure_tls_secret(kube, OWNER, parse_spec(raw))
    assert kube.created == []


def test_workers_mount_the_secret_and_may_dial_only_the_peer_list() -> None:
    spec = parse_spec(fleet_spec())
    pod = build_worker_pod(OWNER, spec, Assignment("a", 0, 40), "h", "cm")
    container = pod["spec"]["containers"][0]
    assert {"name": "cluster-tls", "secret": {"secretName": "llama-tls"}} in pod["spec"]["volumes"]
    assert {"name": "cluster-tls", "mountPath": "/var/run/helix/tls", "readOnly": True} in container["volumeMounts"]
    assert TLS_ENV.items() <= {e["name"]: e["value"] for e in container["env"]}.items()
    command = container["command"]
    assert command[command.index("--peers") + 1] == "/var/run/helix/peers/endpoints.json"  # see test_peer_list
    raw = fleet_spec()
    raw["security"] = {"tlsSecret": {"name": "from-cert-manager"}}
    named = parse_spec(raw)
    assert {"name": "cluster-tls", "secret": {"secretName": "from-cert-manager"}} in build_worker_pod(
        OWNER, named, Assignment("a", 0, 40), "h", "cm")["spec"]["volumes"]
    assert template_hash(named) != template_hash(spec), "another Secret replaces the workers"


def test_the_front_end_mounts_the_cluster_tls_api_keys_and_client_tls() -> None:
    plain = build_frontend_deployment(OWNER, parse_spec(fleet_spec()), PLAN, "cm")["spec"]["template"]["spec"]
    env = {e["name"]: e["value"] for e in plain["containers"][0]["env"]}
    assert TLS_ENV.items() <= env.items()
    assert "HELIX_API_KEYS_FILE" not in env and "HELIX_CLIENT_TLS_CERT" not in env
    raw = fleet_spec()
    raw["security"] = {"apiKeysSecret": {"name": "keys", "key": "tokens"}, "clientTlsSecret": {"name": "public"}}
    template = build_frontend_deployment(OWNER, parse_spec(raw), PLAN, "cm")["spec"]["template"]["spec"]
    container = template["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["HELIX_API_KEYS_FILE"] == "/var/run/helix/api-keys/tokens"
    assert (env["HELIX_CLIENT_TLS_CERT"], env["HELIX_CLIENT_TLS_KEY"]) == ("/var/run/helix/client-tls/tls.crt",
                                                                          "/var/run/helix/client-tls/tls.key")
    volumes = {v["name"]: v["secret"]["secretName"] for v in template["volumes"] if "secret" in v}
    assert volumes == {"cluster-tls": "llama-tls", "api-keys": "keys", "client-tls": "public"}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["api-keys"] == "/var/run/helix/api-keys" and mounts["client-tls"] == "/var/run/helix/client-tls"
