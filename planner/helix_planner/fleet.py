"""Planning at fleet scale (hundreds to thousands of GPUs): sweep, bound, warm-started repair.

The MILP counts nodes per (class, start, length): at 1,000 GPUs in 8 regions that is some
90,000 integer variables, and `build_topology` compares every pair of nodes to find groups.
Neither fits a minute. Here the classes come straight from the declared regions (no pair
scan), the placement from the layer sweep (`sweep`), the certificate from the position-free
bound over GPU types alone (ignoring regions and links only relaxes it, so it stays a valid
upper bound; with hundreds of nodes per type its integrality is what limits it, and that
vanishes), and the throughput from the exact max-flow evaluator, links included.

A replan after a node changes keeps the nodes on one side of it where they are and sweeps
again only the layers on the other side (`repair`, both directions tried), or hands the lost
ranges alone to unused nodes (`replace_lost`).
"""
from collections.abc import Mapping

from helix_planner.bound import position_free_bound
from helix_planner.cluster import SINK, SOURCE, Cluster
from helix_planner.flow import edge_capacity
from helix_planner.models import ModelSpec
from helix_planner.sweep import BISECTION_STEPS, Piece, sweep, sweep_layout
from helix_planner.throughput import CapacityModel
from helix_planner.topology import NodeClass, Topology

Layout = dict[str, tuple[int, int]]
FLEET_NODES = 150  # from this many nodes on, `plan_cluster`'s auto method plans as a fleet


def fleet_classes(cluster: Cluster, model: ModelSpec, capacity_model: CapacityModel) -> list[NodeClass]:
    """Nodes of one GPU type in one declared region, as classes (group = region index)."""
    regions = cluster.regions()
    members: dict[tuple[int, str], list[str]] = {}
    for node in cluster.nodes:
        if capacity_model.max_layers(node.gpu) > 0:
            members.setdefault((regions.index(node.region), node.gpu), []).append(node.name)
    caps = {gpu: tuple(capacity_model.capacity(gpu, k)
                       for k in range(1, min(capacity_model.max_layers(gpu), model.num_layers) + 1))
            for _, gpu in members}
    return [NodeClass(key=f"r{g}-{gpu}", group=g, gpu=gpu, nodes=tuple(names), caps=caps[gpu],
                      source_cap=max(edge_capacity(cluster, model, SOURCE, n) for n in names),
                      sink_cap=max(edge_capacity(cluster, model, n, SINK) for n in names))
            for (g, gpu), names in sorted(members.items())]


def fleet_bound(classes: list[NodeClass], num_layers: int) -> float:
    """The position-free bound over GPU types, every region and link ignored (a relaxation)."""
    by_gpu: dict[str, list[NodeClass]] = {}
    for cls in classes:
        by_gpu.setdefault(cls.gpu, []).append(cls)
    merged = [NodeClass(key=gpu, group=0, gpu=gpu, nodes=tuple(n for c in group for n in c.nodes), caps=group[0].caps,
                        source_cap=max(c.source_cap for c in group), sink_cap=max(c.sink_cap for c in group))
              for gpu, group in sorted(by_gpu.items())]
    names = tuple(n for c in merged for n in c.nodes)
    return position_free_bound(Topology(merged, [names], {}, {}, {}), num_layers)


def fleet_layouts(classes: list[NodeClass], num_layers: int, previous: Layout | None = None) -> dict[str, Layout]:
    """Two sweeps: over the whole fleet (fine-grained, some flow crosses regions) and one per
    region (coarser, but no flow crosses: better where inter-region links are slow). With a
    `previous` layout, nodes keep their ranges where the sweep places the same range."""
    pooled, _ = sweep_layout(classes, num_layers, previous)
    regional: list[Piece] = []
    for group in sorted({c.group for c in classes}):
        regional += sweep_layout([c for c in classes if c.group == group], num_layers, previous)[0]
    layouts = {"sweep": pooled, "sweep-regional": regional}
    return {name: {p.node: (p.start, p.end) for p in pieces} for name, pieces in layouts.items() if pieces}


def _holds(cls: NodeClass, length: int) -> bool:
    return 0 < length <= cls.max_layers and cls.caps[length - 1] > 0


def replace_lost(previous: Layout, classes: list[NodeClass]) -> Layout:
    """`previous` with each lost node's range (a node that left, or can no longer hold its range)
    given to the unused node of most capacity for that many layers, longest ranges first: only the
    lost layers move. Where no unused node can hold a range, it stays uncovered (the max flow of
    the rest decides what that costs)."""
    present = {n: c for c in classes for n in c.nodes}
    layout = {n: r for n, r in previous.items() if n in present and _holds(present[n], r[1] - r[0])}
    spare = {n for n in present if n not in layout}
    for start, end in sorted((r for n, r in previous.items() if n not in layout), key=lambda r: r[0] - r[1]):
        able = [n for n in spare if _holds(present[n], end - start)]
        if able:
            best = max(able, key=lambda n: (present[n].caps[end - start - 1], n))
            layout[best] = (start, end)
            spare.discard(best)
    return layout


def repair(previous: Layout, flows: Mapping[str, float], classes: list[NodeClass], num_layers: int,
           target: float, *, backward: bool = False) -> Layout:
    """`previous` re-swept from the first layer a lost node held to the last layer (or, with
    `backward`, the same on the mirrored model: from its last layer towards the first).

    A node that left (or can no longer hold its range) leaves a hole. Nodes wholly before it
    stay; nodes straddling its start stay with the flow they carried; the rest of the layers
    are swept again with the nodes that were there and the spare ones, at the highest flow up
    to `target` they can cover. So a change near either end of the model moves few layers.
    """
    def mirror(r: tuple[int, int]) -> tuple[int, int]:
        return (num_layers - r[1], num_layers - r[0]) if backward else r

    present = {n: c for c in classes for n in c.nodes}
    ranges = {n: mirror(r) for n, r in previous.items()}
    valid = {n: r for n, r in ranges.items() if n in present and _holds(present[n], r[1] - r[0])}
    lost = [r for n, r in ranges.items() if n not in valid]
    if not lost:
        return dict(previous)
    start = min(a for a, _ in lost)
    kept = {n: r for n, r in valid.items() if r[0] < start}
    active = [(b, present[n].group, min(flows.get(n, 0.0), present[n].caps[b - a - 1]))
              for n, (a, b) in kept.items() if b > start]
    free = [NodeClass(c.key, c.group, c.gpu, tuple(n for n in c.nodes if n not in kept), c.caps,
                      c.source_cap, c.sink_cap) for c in classes]
    best: list[Piece] = []
    floor, ceiling = 0.0, target
    for _ in range(BISECTION_STEPS):
        middle = (floor + ceiling) / 2
        pieces = sweep(free, num_layers, middle, start, active)
        if pieces is None:
            ceiling = middle
        else:
            floor, best = middle, pieces
    layout = {n: mirror(r) for n, r in kept.items()}
    layout.update({p.node: mirror((p.start, p.end)) for p in best})
    return layout


def layers_moved(previous: Layout, layout: Layout) -> int:
    """Layers nodes must load to go from `previous` to `layout` (a node whose range changed
    loads its whole new range)."""
    return sum(end - start for name, (start, end) in layout.items() if previous.get(name) != (start, end))
