"""Test helpers for the operator tests (a uniquely named module: every test folder of the
repo shares sys.path, so a plain `conftest` import could find another folder's).

Fake fleets: Node objects labelled as GKE and NVIDIA GPU feature discovery label them, and
plan documents, and YAML read the way kubectl reads it; a front-end pod and a stand-in for
its HTTP server on 127.0.0.1.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from aiohttp import web

from helix_dev.fleet import KubeYamlLoader  # noqa: F401 (YAML 1.2 numbers, as kubectl reads them)
from helix_dev.fleet import load_manifests as load_documents  # noqa: F401

REPO = Path(__file__).resolve().parents[2]

# --- fake fleets: Node objects labelled as GKE and NVIDIA GPU feature discovery label them ---

GKE_ACCELERATOR = "cloud.google.com/gke-accelerator"
GFD_PRODUCT = "nvidia.com/gpu.product"
REGION = "topology.kubernetes.io/region"
POOL_LABEL = "helix.example.com/pool"


def node(name: str, labels: dict[str, str], *, ready: bool = True, unschedulable: bool = False,
         gpus: int = 1) -> dict[str, Any]:
    body: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": "1", "labels": dict(labels)},
        "spec": {"unschedulable": True} if unschedulable else {},
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                   "allocatable": {"nvidia.com/gpu": str(gpus), "cpu": "8"}},
    }
    return body


def fleet(per_region: int = 8) -> list[dict[str, Any]]:
    """3 regions: A100 and L4 on GKE (gke-accelerator label), T4 on-prem labelled by GFD."""
    nodes = []
    for i in range(per_region):
        nodes.append(node(f"gke-a100-{i}", {GKE_ACCELERATOR: "nvidia-tesla-a100", REGION: "us-central1",
                                            POOL_LABEL: "gke"}))
        nodes.append(node(f"gke-l4-{i}", {GKE_ACCELERATOR: "nvidia-l4", REGION: "europe-west4", POOL_LABEL: "gke"}))
        nodes.append(node(f"dc-t4-{i}", {GFD_PRODUCT: "Tesla-T4", REGION: "onprem-ams", POOL_LABEL: "onprem"}))
    return nodes


def fleet_spec(**planner: Any) -> dict[str, Any]:
    """A HelixCluster spec over `fleet()`: one GKE pool and one GFD pool, short planner limits."""
    return {
        "model": {"name": "llama2-70b"},
        "nodePools": [
            {"name": "gke", "selector": {"matchLabels": {POOL_LABEL: "gke"}}},
            {"name": "onprem", "selector": {"matchExpressions": [{"key": GFD_PRODUCT, "operator": "Exists"}]},
             "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]},
        ],
        "network": {"intraRegion": {"bandwidth": "10Gbps", "latency": "1ms"},
                    "interRegion": {"bandwidth": "1Gbps", "latency": "30ms"},
                    "frontend": {"region": "us-central1"}},
        "planner": {"timeLimitSeconds": 3, "threads": 1, "debounceSeconds": 0.3, "replanMinIntervalSeconds": 0,
                    **planner},
        "worker": {"image": "helix/worker:test"},
        "rollout": {"drainTimeoutSeconds": 5},
    }


def helixcluster(name: str, namespace: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "helix.dev/v1alpha1", "kind": "HelixCluster",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def plan_document(layout: dict[str, tuple[str, str, int, int]], pipelines: list[list[str]], throughput: float,
                  *, model: str = "llama2-70b", bound: float | None = None) -> dict[str, Any]:
    """A schemaVersion-1 plan: layout maps node -> (gpu, region, start, end)."""
    share = throughput / max(1, len(pipelines))
    return {
        "schemaVersion": 1, "kind": "HelixPlan", "inputsHash": "test", "model": {"name": model},
        "cluster": "test", "throughputModel": "profiled", "throughput": throughput,
        "upperBound": bound if bound is not None else throughput * 1.01,
        "solver": {"method": "milp", "status": "Optimal", "seconds": 0.5},
        "nodes": [{"name": n, "gpuType": g, "region": r, "start": s, "end": e}
                  for n, (g, r, s, e) in layout.items()],
        "edges": [],
        "pipelines": [{"stages": [{"node": n, "start": layout[n][2], "end": layout[n][3]} for n in p],
                       "tokensPerSecond": share} for p in pipelines],
    }


def pruned_fields(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Fields the API server would drop from `value` (structural pruning of unknown fields)."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or path == ".metadata":  # metadata is never pruned
        return []
    if isinstance(value, dict) and schema.get("type") == "object":
        if "additionalProperties" in schema:
            extra = schema["additionalProperties"]
            return [p for k, v in value.items() for p in pruned_fields(extra, v, f"{path}.{k}")]
        props = schema.get("properties", {})
        return [f"{path}.{k}" for k in value if k not in props] + [
            p for k, v in value.items() if k in props for p in pruned_fields(props[k], v, f"{path}.{k}")]
    if isinstance(value, list) and "items" in schema:
        return [p for i, v in enumerate(value) for p in pruned_fields(schema["items"], v, f"{path}[{i}]")]
    return []


# --- the front end as the operator reads it: its pod, and a local HTTP server standing in for it ---

def frontend_pod(namespace: str) -> dict[str, Any]:
    """A front-end pod of HelixCluster "llama" (the kubelet stand-in marks it ready)."""
    labels = {"helix.dev/cluster": "llama", "app.kubernetes.io/component": "frontend",
              "app.kubernetes.io/managed-by": "helix-operator"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "llama-frontend-0", "namespace": namespace,
                                                           "labels": labels},
            "spec": {"containers": [{"name": "frontend", "image": "helix/worker:test"}]}}


@asynccontextmanager
async def local_http(path: str, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> AsyncIterator[str]:
    """Serve GET `path` on 127.0.0.1; yields "127.0.0.1:port"."""
    app = web.Application()
    app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    finally:
        await runner.cleanup()
