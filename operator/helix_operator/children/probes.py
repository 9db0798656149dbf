"""Kubelet probes of workers and front ends: the HTTP health endpoints every data-plane process
serves (helix_worker.transport.http_base), not a bare TCP connect, which succeeds while a worker
still loads its layers and after it has declared itself broken."""

from typing import Any

# Liveness fails after this many periods without a 200: a minute, as a busy event loop can be slow to answer.
LIVENESS_PERIOD_SECONDS, LIVENESS_FAILURES = 10, 6


def http_probes(port: str, *, ready_path: str = "/readyz", tls: bool = False) -> dict[str, dict[str, Any]]:
    """readinessProbe on `ready_path` and livenessProbe on /healthz (503 once the process is broken
    for good, so the kubelet restarts it), on the named container `port`; HTTPS when that port
    serves TLS (kubelets do not verify probe certificates)."""
    scheme = "HTTPS" if tls else "HTTP"
    return {
        "readinessProbe": {"httpGet": {"path": ready_path, "port": port, "scheme": scheme}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": port, "scheme": scheme},
                          "periodSeconds": LIVENESS_PERIOD_SECONDS, "failureThreshold": LIVENESS_FAILURES},
    }
