"""The front end's client endpoints with API keys and TLS on, and a worker process's ports,
as an outsider meets them: without a key (or the cluster's certificate) nothing but health,
readiness and metrics answers; with one, generation works over HTTPS and KServe gRPC. Renewed
client certificate files serve the next connection without a restart."""

import asyncio
import json
import socket
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from aiohttp import web
from cryptography import x509
from dataplane_helpers import MODEL, WORKER_ENV, start_workers, write_endpoints, write_plan, write_volume
from tritonclient.utils import InferenceServerException

from helix_proto import helix_stage_pb2 as pb
from helix_proto import helix_stage_pb2_grpc as pb_grpc
from helix_worker.envs import Settings
from helix_worker.fleet.launcher import LocalFleet
from helix_worker.security.apikeys import ApiKeys
from helix_worker.security.issuing import issue, new_ca, write_bundle
from helix_worker.security.tls import ClientTLS, ClusterTLS
from helix_worker.transport.grpcserver import new_server
from helix_worker.transport.http_base import start_site

KEY = "sk-helix-test-0123456789"


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory, checkpoint: Path):
    """One stage and a front end requiring `KEY`, serving its client endpoints with a
    certificate of a public CA (`public.ca`); the fleet's own CA secures the stage hop."""
    directory = tmp_path_factory.mktemp("secured")
    public = new_ca("public")
    served_tls = ClusterTLS.from_dir(write_bundle(directory / "public", public,
                                                  issue(public, "frontend", ["localhost"], ["127.0.0.1"])))
    keys = directory / "api-keys"
    keys.write_text(f"# clients\n{KEY}\n")
    plan, plan_path = write_plan(directory, [[("solo", 0, 6)]])
    env = {"HELIX_API_KEYS_FILE": str(keys), "HELIX_CLIENT_TLS_CERT": str(served_tls.cert),
           "HELIX_CLIENT_TLS_KEY": str(served_tls.key)}
    with LocalFleet(directory / "fleet", env=WORKER_ENV) as fleet:
        endpoints = write_endpoints(directory, start_workers(fleet, plan, plan_path, checkpoint))
        frontend = fleet.wait(fleet.start_frontend(plan_path, endpoints, checkpoint, env=env))
        context = ssl.create_default_context(cafile=served_tls.ca)
        url = f"https://127.0.0.1:{frontend.ports['http']}"
        _wait_ready(url, context)
        yield fleet, frontend, url, context, served_tls.ca


def _wait_ready(url: str, context: ssl.SSLContext, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2, context=context):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def _post(url: str, context: ssl.SSLContext, headers: dict[str, str]) -> tuple[int, dict]:
    body = json.dumps({"prompt": "Helix serves", "max_tokens": 3, "temperature": 0}).encode()
    request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=60, context=context) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_http_apis_need_a_valid_key_and_health_stays_open(secured) -> None:
    _, _, url, context, _ = secured
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": KEY},
                    {"Authorization": f"Basic {KEY}"}):
        status, body = _post(url, context, headers)
        assert status == 401, headers
        assert body["error"]["code"] == "invalid_api_key" and "Bearer" in body["error"]["message"]
    with pytest.raises(urllib.error.HTTPError) as caught:
        urllib.request.urlopen(url + "/v1/models", timeout=10, context=context)
    assert caught.value.code == 401
    status, body = _post(url, context, {"Authorization": f"Bearer {KEY}"})
    assert status == 200 and body["usage"]["completion_tokens"] == 3
    for path in ("/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready",
                 f"/v2/models/{MODEL}/ready"):
        with urllib.request.urlopen(url + path, timeout=10, context=context) as response:
            assert response.status == 200, path
    for path in ("/v2", f"/v2/models/{MODEL}", f"/v2/models/{MODEL}/config"):
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(url + path, timeout=10, context=context)
        assert caught.value.code == 401, path


def test_plain_http_gets_nothing_from_the_tls_port(secured) -> None:
    _, frontend, _, _, _ = secured
    with pytest.raises((OSError, urllib.error.URLError, ConnectionError)):
        urllib.request.urlopen(f"http://127.0.0.1:{frontend.ports['http']}/readyz", timeout=10).read()


def _text(prompt: str, max_tokens: int) -> list[grpcclient.InferInput]:
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    limit = grpcclient.InferInput("max_tokens", [1], "INT32")
    limit.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
    return [text, limit]


def test_kserve_needs_a_valid_key_over_tls(secured) -> None:
    _, frontend, _, _, ca = secured
    address = f"127.0.0.1:{frontend.ports['grpc']}"
    with grpcclient.InferenceServerClient(address, ssl=True, root_certificates=str(ca)) as client:
        assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(MODEL)
        for headers in (None, {"authorization": "Bearer wrong-key"}):
            with pytest.raises(InferenceServerException) as caught:
                client.infer(MODEL, _text("Helix serves", 3), headers=headers)
            assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
            with pytest.raises(InferenceServerException) as caught:
                client.get_model_metadata(MODEL, headers=headers)
            assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
        result = client.infer(MODEL, _text("Helix serves", 3), headers={"authorization": f"Bearer {KEY}"})
        assert len(result.as_numpy("output_ids")) == 3
    with grpcclient.InferenceServerClient(address) as plaintext:
        with pytest.raises(InferenceServerException):
            plaintext.is_server_live()


def test_worker_process_takes_only_the_fleet_members(secured, tmp_path: Path) -> None:
    fleet, _, _, _, _ = secured
    address = next(c for c in fleet.children if c.worker).grpc_address
    other = new_ca("other")
    stranger = ClusterTLS.from_dir(write_bundle(tmp_path / "stranger", other, issue(other, "stranger")))
    member = fleet.member_tls("probe")

    def describe(credentials: grpc.ChannelCredentials | None) -> pb.StageInfo:
        channel = (grpc.insecure_channel(address) if credentials is None else
                   grpc.secure_channel(address, credentials, options=member.channel_options()))
        with channel:
            return pb_grpc.StageServiceStub(channel).Describe(pb.DescribeRequest(), timeout=10)

    def credentials(tls: ClusterTLS) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(tls.ca.read_bytes(), tls.key.read_bytes(), tls.cert.read_bytes())

    for refused in (None, credentials(stranger), grpc.ssl_channel_credentials(member.ca.read_bytes())):
        with pytest.raises(grpc.RpcError) as caught:
            describe(refused)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert describe(credentials(member)).node == "solo"


def test_api_keys_file_is_read_again_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("first\n\n# a comment\n")
    keys = ApiKeys(path)
    assert keys.allows("Bearer first") and keys.allows("bearer  first ")
    assert not keys.allows("Bearer # a comment") and not keys.allows("Bearer") and not keys.allows(None)
    path.write_text("second-key\n")
    assert keys.allows("Bearer second-key") and not keys.allows("Bearer first")


def _client_port_serial(port: int, ca: bytes) -> int:
    """The serial number of the certificate a client port presents (a blocking handshake)."""
    context = ssl.create_default_context(cadata=ca.decode())
    context.set_alpn_protocols(["h2", "http/1.1"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as connection:
            return x509.load_der_x509_certificate(connection.getpeercert(binary_form=True)).serial_number


async def test_renewed_client_tls_serves_new_connections_without_a_restart(tmp_path: Path) -> None:
    """A renewed HELIX_CLIENT_TLS_* Secret (cert-manager's) reaches HTTPS and KServe gRPC clients
    on their next connection."""
    public = new_ca("public")
    first, renewed = (issue(public, "frontend", ["localhost"], ["127.0.0.1"]) for _ in range(2))
    volume = write_volume(tmp_path / "client-tls", {"tls.crt": first.cert_pem, "tls.key": first.key_pem})
    tls = ClientTLS(volume / "tls.crt", volume / "tls.key")
    runner, http_port = await start_site(web.Application(), "127.0.0.1", 0, ssl_context=tls.server_context())
    server = new_server(Settings(), clients=True)
    grpc_port = server.add_secure_port("127.0.0.1:0", tls.server_credentials())
    await server.start()
    try:
        for issued in (first, renewed):
            write_volume(volume, {"tls.crt": issued.cert_pem, "tls.key": issued.key_pem})
            served = await asyncio.gather(*(asyncio.to_thread(_client_port_serial, port, public.cert_pem)
                                            for port in (http_port, grpc_port)))
            assert served == [x509.load_pem_x509_certificate(issued.cert_pem).serial_number] * 2
    finally:
        await server.stop(None)
        await runner.cleanup()
