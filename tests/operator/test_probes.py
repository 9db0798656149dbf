"""Workers and front ends are probed on their HTTP health endpoints (/readyz, /healthz), over
HTTPS when the front end serves client TLS; the probes reach what the processes really serve."""

from pathlib import Path

from aiohttp import web
from opkit import fleet_spec, plan_document

from helix_dev.kubelet import _answers
from helix_operator.api.spec import parse_spec
from helix_operator.children.frontend import build_frontend_deployment
from helix_operator.children.workers import Assignment, build_worker_pod
from helix_planner.plan_format import plan_from_dict
from helix_worker.security.issuing import issue, new_ca, write_bundle
from helix_worker.security.tls import ClientTLS
from helix_worker.transport.http_base import health_routes, start_site

OWNER = {"apiVersion": "helix.dev/v1alpha1", "kind": "HelixCluster",
         "metadata": {"name": "llama", "namespace": "inference", "uid": "uid-1"}}
PLAN = plan_from_dict(plan_document({"a": ("A100", "us-central1", 0, 80)}, [["a"]], 100.0))


def _http_get(probe: dict) -> tuple[str, str, str]:
    get = probe["httpGet"]
    return get["path"], get["port"], get["scheme"]


def test_workers_and_the_front_end_are_probed_on_their_health_paths() -> None:
    """Workers are ready once they serve (/readyz); a front end once it answers, before it has
    pipelines, so that a plan switch reusing every node does not wait on itself."""
    worker = build_worker_pod(OWNER, parse_spec(fleet_spec()), Assignment("a", 0, 80), "h", "cm")["spec"]
    container = worker["containers"][0]
    assert _http_get(container["readinessProbe"]) == ("/readyz", "http", "HTTP")
    assert _http_get(container["livenessProbe"]) == ("/healthz", "http", "HTTP")
    assert {"name": "http", "containerPort": 8081} in container["ports"]

    raw = fleet_spec()
    raw["security"] = {"clientTlsSecret": {"name": "public"}}
    for spec, scheme in ((fleet_spec(), "HTTP"), (raw, "HTTPS")):
        template = build_frontend_deployment(OWNER, parse_spec(spec), PLAN, "cm")["spec"]["template"]["spec"]
        frontend = template["containers"][0]
        assert _http_get(frontend["readinessProbe"]) == ("/healthz", "http", scheme), "a switch must not wait on it"
        assert _http_get(frontend["livenessProbe"]) == ("/healthz", "http", scheme)


async def test_an_https_probe_reaches_a_tls_health_site(tmp_path: Path) -> None:
    """The front end's HTTP side with client TLS answers the probes: 503 on /readyz until ready."""
    ca = new_ca("probe-test")
    bundle = write_bundle(tmp_path / "tls", ca, issue(ca, "frontend", dns_names=["localhost"], ips=["127.0.0.1"]))
    ready = False
    app = web.Application()
    health_routes(app, lambda: ready, lambda: b"")
    tls = ClientTLS(bundle / "tls.crt", bundle / "tls.key")
    runner, port = await start_site(app, "127.0.0.1", 0, ssl_context=tls.server_context())
    try:
        assert await _answers("httpGet", port, "/healthz", True, None)
        assert not await _answers("httpGet", port, "/readyz", True, None)
        ready = True
        assert await _answers("httpGet", port, "/readyz", True, None)
        assert not await _answers("httpGet", port, "/readyz", False, None), "plain HTTP to a TLS port fails"
    finally:
        await runner.cleanup()
