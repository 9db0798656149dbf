"""The cluster as a flow network: GPU nodes, directed links, and the front end.

The front end (the paper's "coordinator") is both source and sink: it sends token ids to
first stages and receives sampled tokens from last stages. Node-to-node links carry
activations. Every size is in bytes and every rate in bytes/s.
"""

from dataclasses import dataclass, field

from helix_planner.errors import PlanningError

SOURCE = "source"
SINK = "sink"


@dataclass(frozen=True)
class Node:
    name: str
    gpu: str
    region: str = "default"


@dataclass(frozen=True)
class Link:
    """A directed link; `bandwidth` in bytes/s, `latency` in seconds."""

    src: str
    dst: str
    bandwidth: float
    latency: float = 0.0


@dataclass
class Cluster:
    """Nodes plus directed links; links to/from the front end use SOURCE and SINK as names."""

    nodes: list[Node]
    links: dict[tuple[str, str], Link] = field(default_factory=dict)
    name: str = "cluster"

    def __post_init__(self) -> None:
        names = [node.name for node in self.nodes]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise PlanningError(f"node names must be unique; repeated: {', '.join(duplicates)}")
        if not self.nodes:
            raise PlanningError("the cluster has no GPU nodes: add nodes or node pools")

    @property
    def node_names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise PlanningError(f"no node named {name!r} in cluster {self.name!r}")

    def link(self, src: str, dst: str) -> Link | None:
        return self.links.get((src, dst))

    def add_link(self, link: Link) -> None:
        if link.bandwidth <= 0:
            raise PlanningError(f"link {link.src} -> {link.dst} has zero bandwidth ({link.bandwidth}): remove the "
                                "link (in YAML: `disabled: true`) or give its real bandwidth")
        self.links[(link.src, link.dst)] = link

    def gpu_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for node in self.nodes:
            counts[node.gpu] = counts.get(node.gpu, 0) + 1
        return counts

    def regions(self) -> list[str]:
        return sorted({node.region for node in self.nodes})

    def without(self, removed: set[str]) -> "Cluster":
        """The same network minus some nodes (for replanning after nodes leave)."""
        nodes = [n for n in self.nodes if n.name not in removed]
        links = {k: v for k, v in self.links.items() if k[0] not in removed and k[1] not in removed}
        return Cluster(nodes=nodes, links=links, name=self.name)
