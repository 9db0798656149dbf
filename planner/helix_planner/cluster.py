"""The cluster as a flow network: GPU nodes, directed links, and the front end.

The front end (the paper's "coordinator") is both source and sink: it sends token ids to
first stages and receives sampled tokens from last stages. Node-to-node links carry
activations. Every size is in bytes and every rate in bytes/s.
"""

from collections.abc import Iterator, Mapping, MutableMapping
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
    links: MutableMapping[tuple[str, str], Link] = field(default_factory=dict)
    name: str = "cluster"
    _index: dict[str, int] = field(init=False, repr=False, compare=False)  # name -> position in `nodes`

    def __post_init__(self) -> None:
        self._index = {node.name: i for i, node in enumerate(self.nodes)}
        if len(self._index) < len(self.nodes):
            names = [node.name for node in self.nodes]
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise PlanningError(f"node names must be unique; repeated: {', '.join(duplicates)}")
        if not self.nodes:
            raise PlanningError("the cluster has no GPU nodes: add nodes or node pools")

    @property
    def node_names(self) -> list[str]:
        return [node.name for node in self.nodes]

    def node(self, name: str) -> Node:
        i = self._index.get(name, -1)
        if 0 <= i < len(self.nodes) and self.nodes[i].name == name:  # entries may be replaced in place
            return self.nodes[i]
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
        links: MutableMapping[tuple[str, str], Link]
        if isinstance(self.links, RegionMesh):
            links = self.links.without(removed)
        else:
            links = {k: v for k, v in self.links.items() if k[0] not in removed and k[1] not in removed}
        return Cluster(nodes=nodes, links=links, name=self.name)

    def link_signature(self) -> object:
        """What identifies the links (for input hashes): the region table of a mesh, else every link."""
        if isinstance(self.links, RegionMesh):
            return self.links.signature()
        return sorted((k[0], k[1], v.bandwidth, v.latency) for k, v in self.links.items())


class RegionMesh(MutableMapping[tuple[str, str], Link]):
    """Links between every two nodes, given once per pair of regions.

    A fleet of N nodes has N^2 links; at 2,000 nodes a dict of them takes a gigabyte and half
    a minute to build. Where links depend only on the two regions (as in a synthetic fleet or
    a YAML `interRegion`/`regionPairs` table), this answers each lookup from the region table.
    Links set explicitly (the front end's, overrides) are stored as in a dict and win; a
    deleted region link is remembered as removed.
    """

    def __init__(self, regions: Mapping[str, str], pairs: Mapping[tuple[str, str], tuple[float, float]]) -> None:
        self.regions = dict(regions)  # node -> region
        self.pairs = dict(pairs)  # (region, region) -> (bandwidth B/s, latency s)
        self.explicit: dict[tuple[str, str], Link] = {}
        self.removed: set[tuple[str, str]] = set()

    def _meshed(self, key: tuple[str, str]) -> Link | None:
        a, b = key
        if a == b or key in self.removed or a not in self.regions or b not in self.regions:
            return None
        pair = self.pairs.get((self.regions[a], self.regions[b]))
        return Link(a, b, pair[0], pair[1]) if pair else None

    def __getitem__(self, key: tuple[str, str]) -> Link:
        link = self.explicit.get(key) or self._meshed(key)
        if link is None:
            raise KeyError(key)
        return link

    def __setitem__(self, key: tuple[str, str], link: Link) -> None:
        self.explicit[key] = link

    def __delitem__(self, key: tuple[str, str]) -> None:
        if key not in self:
            raise KeyError(key)
        self.explicit.pop(key, None)
        if self._meshed(key) is not None:
            self.removed.add(key)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        yield from self.explicit
        for a in self.regions:
            for b in self.regions:
                if (a, b) not in self.explicit and self._meshed((a, b)) is not None:
                    yield (a, b)

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def without(self, removed: set[str]) -> "RegionMesh":
        mesh = RegionMesh({n: r for n, r in self.regions.items() if n not in removed}, self.pairs)
        mesh.explicit = {k: v for k, v in self.explicit.items() if k[0] not in removed and k[1] not in removed}
        mesh.removed = {k for k in self.removed if k[0] not in removed and k[1] not in removed}
        return mesh

    def signature(self) -> object:
        return (sorted(self.regions.items()), sorted(self.pairs.items()), sorted(self.removed),
                sorted((k[0], k[1], v.bandwidth, v.latency) for k, v in self.explicit.items()))
