"""What the planner is asked: the flow-network cluster, and fingerprints of what went in.

Two fingerprints tell why a replan is due: `spec` (model and weights URI, network, planner
settings and the GPU catalog with its GPUProfiles) and `nodes` (usable nodes with GPU type and region).
"""

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from helix_operator.api.spec import ClusterSpec
from helix_operator.fleet.discovery import Discovery
from helix_planner.cluster import Cluster
from helix_planner.io.cluster_yaml import cluster_from_mapping
from helix_planner.profiles import Catalog

GB = 1e9


@dataclass(frozen=True)
class InputsKey:
    spec: str
    nodes: str

    def encode(self) -> str:
        return f"{self.spec}.{self.nodes}"

    @classmethod
    def decode(cls, text: str | None) -> "InputsKey | None":
        if not text or "." not in text:
            return None
        spec, nodes = text.split(".", 1)
        return cls(spec, nodes)


def build_cluster(name: str, spec: ClusterSpec, discovery: Discovery) -> Cluster:
    """The planner's cluster: discovered nodes joined by the spec's network model.

    A disabled region pair becomes a removed link between every two nodes of those regions.
    """
    network = dict(spec.network)
    pairs = network.get("regionPairs") or []
    cut = {frozenset((p["from"], p["to"])) for p in pairs if p.get("disabled")}
    network["regionPairs"] = [{k: v for k, v in p.items() if k != "disabled"} for p in pairs if not p.get("disabled")]
    nodes = discovery.nodes
    network["links"] = [{"from": a.name, "to": b.name, "disabled": True}
                        for i, a in enumerate(nodes) for b in nodes[i + 1:]
                        if a.region != b.region and frozenset((a.region, b.region)) in cut]
    mapping = {"name": name, "nodes": [{"name": n.name, "gpu": n.gpu_type, "region": n.region} for n in nodes],
               "network": network}
    cluster, _ = cluster_from_mapping(mapping)
    return cluster


def memory_shortfall(spec: ClusterSpec, discovery: Discovery, catalog: Catalog) -> str | None:
    """A message when the weights alone exceed the usable nodes' GPU memory, else None."""
    need = spec.model.num_layers * spec.model.bytes_per_layer
    have = sum(catalog.gpu(n.gpu_type).vram_bytes for n in discovery.nodes)
    if need <= have:
        return None
    return (f"{spec.model.name} needs {need / GB:.1f} GB of GPU memory for its weights but the "
            f"{len(discovery.nodes)} usable nodes have {have / GB:.1f} GB: add nodes or node pools, "
            "raise maxNodes, or serve a smaller model")


def inputs_key(spec: ClusterSpec, discovery: Discovery, catalog: Catalog) -> InputsKey:
    planner = spec.planner
    body: dict[str, Any] = {
        "model": [spec.model.name, spec.model.num_layers, spec.model.hidden_size, spec.model.bytes_per_layer,
                  spec.model.dtype],
        "weights": [spec.weights_uri, spec.credentials_secret],  # a new URI is pinned to its commit by a replan
        "network": spec.network,
        "planner": [planner.throughput_model, planner.objective, planner.slo_ttft, planner.time_limit,
                    planner.mip_gap, planner.churn_weight],
        "gpus": sorted(repr(gpu) for gpu in catalog.gpus.values()),  # GPUProfiles change this, nodes do not
    }
    if planner.objective == "Serving":  # its candidates are judged with the front end's routing
        body["routing"] = spec.frontend.routing
    return InputsKey(_digest(body), discovery.fingerprint)


def _digest(body: Any) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:16]
