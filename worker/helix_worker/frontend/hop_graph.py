"""Which plan nodes can take a request on from which layer: the hop graph routes are composed over.

The plan's pipelines are a few of the routes its layout allows. A stage runs any layer range
inside its own (its engine groups a step's pieces by their hop's layers) and may dial every
node of its plan, so a request that has run layers [0, p) can go on at any node holding layer p,
running from p to that node's end. Routes composed so can cross the planned pipelines; since
every hop ends at its node's end and the next starts there, no route visits a node twice.
"""

from dataclasses import dataclass

from helix_worker.errors import ServingError
from helix_worker.protocol import Hop


@dataclass(frozen=True)
class HopGraph:
    num_layers: int
    hops: dict[str, Hop]  # node -> its whole layer range, at its address

    def holding(self, layer: int) -> list[Hop]:
        """Nodes that can run `layer`, each as the hop from there to its end."""
        return [Hop(h.node, h.address, layer, h.end) for h in self.hops.values() if h.start <= layer < h.end]

    def next_hops(self) -> dict[str, tuple[Hop, ...]]:
        """For each node, every hop a composed route may take after it (what its heartbeats ask about)."""
        return {node: tuple(self.holding(hop.end)) for node, hop in self.hops.items() if hop.end < self.num_layers}


def hop_graph(layout: dict[str, tuple[int, int]], addresses: dict[str, str], num_layers: int) -> HopGraph:
    """The graph over the nodes the front end serves through (`addresses`), at their plan layer ranges."""
    missing = sorted(set(addresses) - set(layout))
    if missing:
        raise ServingError(f"pipeline node(s) {', '.join(missing)} have no layer range in the plan: replan")
    return HopGraph(num_layers, {n: Hop(n, a, *layout[n]) for n, a in sorted(addresses.items())})
