"""Build the links of a cluster from a network model: per-region bandwidth and latency.

Intra-region pairs get `intra`, inter-region pairs `inter` (or a region-pair override),
the front end reaches nodes in its own region like `intra` and others like `inter` unless
`frontend` is given; per-link overrides come last, and `removed` pairs get no link.
"""

from dataclasses import dataclass, field

from helix_planner.cluster import SINK, SOURCE, Cluster, Link, Node
from helix_planner.errors import PlanningError


@dataclass(frozen=True)
class LinkSpec:
    bandwidth: float
    latency: float


@dataclass
class NetworkModel:
    """Bandwidths in bytes/s, latencies in seconds."""

    intra: LinkSpec = field(default_factory=lambda: LinkSpec(1.25e9, 0.001))
    inter: LinkSpec = field(default_factory=lambda: LinkSpec(12.5e6, 0.05))
    frontend: LinkSpec | None = None
    frontend_region: str | None = None
    region_pairs: dict[tuple[str, str], LinkSpec] = field(default_factory=dict)
    link_overrides: dict[tuple[str, str], LinkSpec] = field(default_factory=dict)
    removed: set[tuple[str, str]] = field(default_factory=set)


def build_cluster(nodes: list[Node], network: NetworkModel, *, name: str = "cluster") -> Cluster:
    """A full mesh between nodes plus front-end links, shaped by `network`."""
    cluster = Cluster(nodes=list(nodes), name=name)
    known = set(cluster.node_names) | {SOURCE, SINK}
    for pair in [*network.link_overrides, *network.removed]:
        for end in pair:
            if end not in known:
                raise PlanningError(f"network override names unknown node {end!r}; known nodes: {sorted(known)}")
    for a in cluster.nodes:
        for b in cluster.nodes:
            if a.name != b.name:
                _add(cluster, a.name, b.name, _between(network, a.region, b.region), network)
        to_frontend = network.frontend or _between(network, network.frontend_region or a.region, a.region)
        _add(cluster, SOURCE, a.name, to_frontend, network)
        _add(cluster, a.name, SINK, to_frontend, network)
    return cluster


def _between(network: NetworkModel, a: str, b: str) -> LinkSpec:
    if (a, b) in network.region_pairs:
        return network.region_pairs[(a, b)]
    if (b, a) in network.region_pairs:
        return network.region_pairs[(b, a)]
    return network.intra if a == b else network.inter


def _add(cluster: Cluster, src: str, dst: str, spec: LinkSpec, network: NetworkModel) -> None:
    if _pair(src, dst) & network.removed:
        return
    override = network.link_overrides.get((src, dst))
    if override is None:
        override = (network.link_overrides.get((dst, src))
                    if SOURCE not in (src, dst) and SINK not in (src, dst) else None)
    if override is None and src == SOURCE:
        override = network.link_overrides.get((SINK, dst)) or network.link_overrides.get((dst, SINK))
    cluster.add_link(Link(src, dst, (override or spec).bandwidth, (override or spec).latency))


def _pair(src: str, dst: str) -> set[tuple[str, str]]:
    """The names under which a link may be listed: either direction, source and sink alike."""
    ends = {(src, dst), (dst, src)}
    return ends | {(SINK if a == SOURCE else a, SINK if b == SOURCE else b) for a, b in ends}
