"""Which nodes a request may visit: per-hop successors for hop-by-hop schedulers, and the
max-flow pipelines for flow-following ones.

Activations leaving node a (having run up to a.end) may enter node b when a link a -> b
exists and b starts at a.end, or, with partial inference (Petals/Swarm-style overlapping
layouts), when b holds layer a.end. Nodes from which no route reaches the last layer and
the front end are pruned, so a hop-by-hop choice can never strand a request.
"""

from collections.abc import Callable
from dataclasses import dataclass

from helix_planner.cluster import SINK, SOURCE, Cluster
from helix_planner.errors import PlanningError
from helix_planner.pipelines import Pipeline
from helix_planner.sim.compute import GpuNode
from helix_planner.sim.network import Channel
from helix_planner.sim.request import Hop, Request

Route = tuple[Hop, ...]
Chooser = Callable[[str, list[GpuNode]], GpuNode]


@dataclass(frozen=True)
class RouteGraph:
    """Entry nodes and successors per node (pruned), the flow's pipelines and their weights,
    and the links (for schedulers that look at latency and backlog)."""

    num_layers: int
    entry: tuple[GpuNode, ...]
    successors: dict[str, tuple[GpuNode, ...]]
    pipelines: tuple[Route, ...]
    weights: tuple[float, ...]
    links: dict[tuple[str, str], Channel]

    def walk(self, choose: Chooser) -> Route:
        """Build a route hop by hop; `choose(previous, candidates)` picks the next node
        (`previous` is a node name or SOURCE; pruning guarantees candidates)."""
        hops: list[Hop] = []
        previous, candidates, position = SOURCE, self.entry, 0
        while position < self.num_layers:
            node = choose(previous, list(candidates))
            hops.append(Hop(node, position, node.end))
            previous, position = node.name, node.end
            candidates = self.successors[node.name]
        return tuple(hops)


def route_fits(route: Route, request: Request) -> bool:
    """Whether every node of `route` can reserve `request`'s worst-case KV cache."""
    need = request.worst_case_tokens
    return all(hop.node.kv.fits(need * hop.layers) for hop in route)


def build_routes(cluster: Cluster, nodes: dict[str, GpuNode], num_layers: int, pipelines: list[Pipeline],
                 links: dict[tuple[str, str], Channel], *, partial_inference: bool) -> RouteGraph:
    """The hop graph of `nodes` over `cluster`'s links and the pipelines checked against it."""

    def hands_over(a: GpuNode, b: GpuNode) -> bool:
        if partial_inference:
            return b.start <= a.end < b.end
        return b.start == a.end

    finishing: set[str] = set()
    successors: dict[str, tuple[GpuNode, ...]] = {}
    # Without partial inference only nodes starting where `a` ends can follow it: index them,
    # so that a fleet's routes cost its handovers, not all pairs of nodes.
    starting: dict[int, list[GpuNode]] = {}
    for node in nodes.values():
        starting.setdefault(node.start, []).append(node)
    for a in sorted(nodes.values(), key=lambda n: -n.end):
        if a.end == num_layers:
            successors[a.name] = ()
            if cluster.link(a.name, SINK) is not None:
                finishing.add(a.name)
            continue
        following = nodes.values() if partial_inference else starting.get(a.end, [])
        successors[a.name] = tuple(b for b in following if b.name in finishing and hands_over(a, b)
                                   and cluster.link(a.name, b.name) is not None)
        if successors[a.name]:
            finishing.add(a.name)
    entry = tuple(n for n in nodes.values() if n.start == 0 and n.name in finishing
                  and cluster.link(SOURCE, n.name) is not None)
    if not entry:
        raise PlanningError(f"no route carries a request through all {num_layers} layers of this layout and back "
                            "to the front end: check the layout covers every layer, the links join consecutive "
                            "stages, and pass --partial-inference for overlapping (Petals/Swarm) layouts")
    routes = tuple(_route(p, nodes, cluster, num_layers) for p in pipelines if p.tokens_per_second > 0)
    return RouteGraph(num_layers, entry, successors, routes,
                      tuple(p.tokens_per_second for p in pipelines if p.tokens_per_second > 0), links)


def _route(pipeline: Pipeline, nodes: dict[str, GpuNode], cluster: Cluster, num_layers: int) -> Route:
    """A plan's pipeline as hops, refusing one that does not fit this cluster and layout."""
    hops, position, previous = [], 0, SOURCE
    for stage in pipeline.stages:
        node = nodes.get(stage.node)
        if node is None or not node.start <= stage.start < stage.end <= node.end:
            raise PlanningError(f"plan/cluster mismatch: pipeline stage {stage.node} [{stage.start}, {stage.end}) "
                                "is not a layer range that node holds in this layout")
        if stage.start != position or cluster.link(previous, stage.node) is None:
            raise PlanningError(f"plan/cluster mismatch: the pipeline cannot go from {previous} to {stage.node} "
                                f"at layer {stage.start} (no link, or layers out of order)")
        hops.append(Hop(node, stage.start, stage.end))
        position, previous = stage.end, stage.node
    if position != num_layers or cluster.link(previous, SINK) is None:
        raise PlanningError(f"plan/cluster mismatch: a pipeline ends at layer {position} on {previous}, "
                            f"not at layer {num_layers} with a link to the front end")
    return tuple(hops)
