"""Max-flow evaluation of a placement: the throughput it can carry and where it saturates.

The placement becomes a DAG: front end -> nodes starting at layer 0, node i -> node j when j
starts exactly where i ends (and a link exists), nodes ending at the last layer -> front end.
Each node is split into in/out vertices joined by its capacity T(k). Capacities are scaled
to integers for scipy's Dinic solver (relative error below 1e-6).
"""

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_array
from scipy.sparse.csgraph import maximum_flow

from helix_planner.cluster import SINK, SOURCE, Cluster
from helix_planner.errors import PlanningError
from helix_planner.models import ModelSpec
from helix_planner.throughput import CapacityModel

Layout = dict[str, tuple[int, int]]

_INT_LIMIT = 2**31 - 1
_RESOLUTION = 1e-6


@dataclass(frozen=True)
class FlowResult:
    """Max flow of a placement with the flow on every edge and the saturated cut."""

    value: float
    node_capacity: dict[str, float]
    node_flow: dict[str, float]
    edge_flow: dict[tuple[str, str], float]
    edge_capacity: dict[tuple[str, str], float]
    bottlenecks: list[str]


def edge_capacity(cluster: Cluster, model: ModelSpec, src: str, dst: str) -> float:
    """Tokens/s a link carries: token ids to/from the front end, activations between nodes."""
    link = cluster.link(src, dst)
    if link is None:
        return 0.0
    per_token = model.token_bytes if SOURCE in (src, dst) or SINK in (src, dst) else model.activation_bytes_per_token
    return link.bandwidth / per_token


def node_capacity(cluster: Cluster, capacity_model: CapacityModel, model: ModelSpec, name: str, layers: int) -> float:
    """T(k), capped by what the node's NIC can move (its activations in or out)."""
    node = cluster.node(name)
    if layers > capacity_model.max_layers(node.gpu):
        raise PlanningError(
            f"node {name} ({node.gpu}) cannot hold {layers} layers of {model.name}: "
            f"at most {capacity_model.max_layers(node.gpu)}"
        )
    return capacity_model.capacity(node.gpu, layers)


def evaluate(
    cluster: Cluster,
    model: ModelSpec,
    capacity_model: CapacityModel,
    layout: Layout,
    *,
    partial_inference: bool = False,
) -> FlowResult:
    """The max flow (tokens/s) of `layout` and its decomposition onto nodes and edges.

    With `partial_inference`, node j may take over from node i anywhere inside its range
    (start_j <= end_i < end_j), as Petals-style overlapping layouts need.
    """
    used = [n for n in cluster.node_names if n in layout]
    index = {name: i for i, name in enumerate(used)}
    src_v, sink_v = 0, 1

    def vin(name: str) -> int:
        return 2 + 2 * index[name]

    def vout(name: str) -> int:
        return 3 + 2 * index[name]

    edges: list[tuple[int, int, float, tuple[str, str]]] = []
    caps: dict[str, float] = {}
    for name in used:
        start, end = layout[name]
        if not 0 <= start < end <= model.num_layers:
            raise PlanningError(f"node {name} has invalid layer range [{start}, {end}) for {model.num_layers} layers")
        caps[name] = node_capacity(cluster, capacity_model, model, name, end - start)
        edges.append((vin(name), vout(name), caps[name], (name, name)))
        if start == 0:
            edges.append((src_v, vin(name), edge_capacity(cluster, model, SOURCE, name), (SOURCE, name)))
        if end == model.num_layers:
            edges.append((vout(name), sink_v, edge_capacity(cluster, model, name, SINK), (name, SINK)))
    for a, b in handovers(used, layout, partial_inference):
        edges.append((vout(a), vin(b), edge_capacity(cluster, model, a, b), (a, b)))
    edges = [e for e in edges if e[2] > 0]
    if not edges:
        return FlowResult(0.0, caps, {n: 0.0 for n in used}, {}, {}, [])

    bound = sum(caps.values()) + 1.0
    scale = min(1.0 / _RESOLUTION, _INT_LIMIT / (2 * bound))
    rows = np.array([e[0] for e in edges])
    cols = np.array([e[1] for e in edges])
    data = np.array([max(1, int(min(e[2], bound) * scale)) for e in edges], dtype=np.int32)
    size = 2 + 2 * len(used)
    graph = csr_array((data, (rows, cols)), shape=(size, size))
    result = maximum_flow(graph, src_v, sink_v)
    # Read the flow of each edge from the sparse result (a dense copy is (2N)^2 integers).
    flow = np.asarray(csr_array(result.flow)[rows, cols]).ravel()

    edge_flow = {e[3]: max(0.0, float(f) / scale) for e, f in zip(edges, flow) if e[3][0] != e[3][1]}
    node_flow = {e[3][0]: max(0.0, float(f) / scale) for e, f in zip(edges, flow) if e[3][0] == e[3][1]}
    edge_caps = {e[3]: e[2] for e in edges if e[3][0] != e[3][1]}
    bottlenecks = _min_cut(size, edges, flow, scale, src_v)
    return FlowResult(float(result.flow_value) / scale, caps, node_flow, edge_flow, edge_caps, bottlenecks)


def handovers(used: list[str], layout: Layout, partial_inference: bool) -> list[tuple[str, str]]:
    """Pairs (a, b) where activations leaving a's range can enter b's: b starts where a ends
    (or, with partial inference, b holds the layer after a's last). Found through an index by
    start layer, so a large fleet costs its handovers, not all pairs of nodes."""
    if partial_inference:
        return [(a, b) for a in used for b in used
                if a != b and layout[b][0] <= layout[a][1] < layout[b][1]]
    starting: dict[int, list[str]] = {}
    for name in used:
        starting.setdefault(layout[name][0], []).append(name)
    return [(a, b) for a in used for b in starting.get(layout[a][1], [])]


def _min_cut(size: int, edges: list[tuple[int, int, float, tuple[str, str]]], flow: np.ndarray, scale: float,
             src_v: int) -> list[str]:
    """Name the saturated edges of the min cut: what limits throughput (`flow` per edge)."""
    residual: dict[int, list[int]] = {v: [] for v in range(size)}
    for (u, v, cap, _), used in zip(edges, flow):
        if used < int(cap * scale) - 1:
            residual[u].append(v)
        if used > 0:
            residual[v].append(u)
    seen, stack = {src_v}, [src_v]
    while stack:
        u = stack.pop()
        for v in residual[u]:
            if v not in seen:
                seen.add(v)
                stack.append(v)
    cut = []
    for u, v, cap, (a, b) in edges:
        if u in seen and v not in seen:
            cut.append(f"node {a} (compute, {cap:.1f} tok/s)" if a == b else f"link {a}->{b} ({cap:.1f} tok/s)")
    return cut
