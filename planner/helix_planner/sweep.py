"""Layer sweep: a placement for large fleets that mixes GPU types and regions freely.

Inside a region the links never limit the flow, so a placement carries F tokens/s when every
layer is covered by exactly F of node flow: then what ends at a layer boundary equals what
starts there, and the fast links route it. The sweep walks the layers once; at each boundary
it replaces the flow that ended with new nodes until coverage is back to F, the last one
trimmed to fit. Which node: a node of type g holding k layers at flow f uses k*f of its
`budget` max_k k*T_g(k) (what it could give at best); the sweep picks the most budget-
efficient (type, k), preferring choices that close the deficit exactly (a remainder forces
another node in later). Bisection on F finds the largest target the fleet completes.

Regions: each region is owed a share of F in proportion to its budget; the node comes from
the region furthest below its share, so each region's flow mostly stays in the region and
only small mismatches cross the slower inter-region links. A whole fleet's nodes fill each
boundary, which is what makes the fill fine-grained at scale (per region, a boundary sees
one or two nodes, and the sweep reaches only 93-95% of the region's budget; pooled, 97-98%).
The evaluator's max flow of the layout is what the planner reports, links included.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from helix_planner.topology import NodeClass

Layout = dict[str, tuple[int, int]]
# A choice that leaves part of the deficit open scores this much lower when the remainder is
# smaller than REMAINDER_SHARE of the target (it would need another, poorly used, node).
REMAINDER_PENALTY = 0.2
REMAINDER_SHARE = 0.15
BISECTION_STEPS = 22


@dataclass(frozen=True)
class Piece:
    """A node's place in the sweep: layers [start, end) at `flow` tokens/s."""

    node: str
    start: int
    end: int
    flow: float


def budget(cls: NodeClass) -> float:
    """Most layer-tokens/s a node of this class can give: max_k k*T(k)."""
    return max((k * t for k, t in enumerate(cls.caps, start=1)), default=0.0)


def sweep_layout(classes: Sequence[NodeClass], num_layers: int,
                 previous: Mapping[str, tuple[int, int]] | None = None) -> tuple[list[Piece], float]:
    """The pieces of the best sweep and its target F (0 and no pieces if nothing covers the model).
    With `previous`, a piece goes to a node that held exactly its range when one is free."""
    total = sum(len(c.nodes) * budget(c) for c in classes)
    low, high, best = 0.0, total / num_layers, None
    for _ in range(BISECTION_STEPS):
        middle = (low + high) / 2
        pieces = sweep(classes, num_layers, middle, previous=previous)
        if pieces is None:
            high = middle
        else:
            low, best = middle, pieces
    return (best, low) if best is not None else ([], 0.0)


def sweep(classes: Sequence[NodeClass], num_layers: int, target: float, start: int = 0,
          active: Sequence[tuple[int, int, float]] = (),
          previous: Mapping[str, tuple[int, int]] | None = None) -> list[Piece] | None:
    """Pieces covering layers [start, num_layers) with exactly `target` tokens/s, or None when
    the nodes run out. `active` (end layer, region, flow) is coverage already there at `start`
    from nodes that stay (a replan's); `previous` as in `sweep_layout`."""
    end = num_layers
    if target <= 0:
        return []
    free = {c.key: _Pool(c, previous or {}) for c in classes}
    options = {c.key: [(k, t, budget(c)) for k, t in enumerate(c.caps, start=1) if t > 0] for c in classes}
    regions = sorted({c.group for c in classes})
    share = {g: sum(len(c.nodes) * budget(c) for c in classes if c.group == g) for g in regions}
    total = sum(share.values()) or 1.0
    owed = {g: target * share[g] / total for g in regions}
    covered = dict.fromkeys(regions, 0.0)
    ending: dict[int, list[tuple[int, float]]] = {}
    for stop, group, flow in active:
        covered[group] = covered.get(group, 0.0) + flow
        ending.setdefault(stop, []).append((group, flow))
    owed.update({g: 0.0 for g in covered if g not in owed})
    pieces: list[Piece] = []
    for layer in range(start, end):
        for group, flow in ending.pop(layer, []):
            covered[group] -= flow
        deficit = target - sum(covered.values())
        while deficit > 1e-9 * target:
            choice = _choose(classes, free, options, owed, covered, deficit, end - layer, target)
            if choice is None:
                return None
            cls, k, flow = choice
            name = free[cls.key].take((layer, layer + k))
            pieces.append(Piece(name, layer, layer + k, flow))
            covered[cls.group] += flow
            ending.setdefault(layer + k, []).append((cls.group, flow))
            deficit -= flow
    return pieces


def _choose(classes: Sequence[NodeClass], free: dict[str, "_Pool"], options: dict[str, list[tuple[int, float, float]]],
            owed: dict[int, float], covered: dict[int, float], deficit: float, room: int,
            target: float) -> tuple[NodeClass, int, float] | None:
    """The (class, layers, flow) to add: from the region furthest below its share, the most
    budget-efficient choice (see the module docstring)."""
    open_regions = sorted({c.group for c in classes if free[c.key].left}, key=lambda g: (covered[g] - owed[g], g))
    for region in open_regions:
        best: tuple[float, NodeClass, int, float] | None = None
        for cls in classes:
            if cls.group != region or not free[cls.key].left:
                continue
            for k, t, most in options[cls.key]:
                if k > room:
                    break
                flow = min(t, deficit)
                left = deficit - flow
                score = k * flow / most - (REMAINDER_PENALTY if 0 < left < REMAINDER_SHARE * target else 0.0)
                if best is None or score > best[0]:
                    best = (score, cls, k, flow)
        if best is not None:
            return best[1], best[2], best[3]
    return None


class _Pool:
    """A class's free nodes; `take` prefers one that held the wanted range before (a replan
    then moves fewer layers)."""

    def __init__(self, cls: NodeClass, previous: Mapping[str, tuple[int, int]]) -> None:
        self.order = list(cls.nodes)
        self.held: dict[tuple[int, int], list[str]] = {}
        for name in cls.nodes:
            if name in previous:
                self.held.setdefault(previous[name], []).append(name)
        self.taken: set[str] = set()
        self.left = len(self.order)

    def take(self, wanted: tuple[int, int]) -> str:
        candidates = self.held.get(wanted, [])
        while candidates and candidates[-1] in self.taken:
            candidates.pop()
        while self.order[-1] in self.taken:
            self.order.pop()
        name = candidates.pop() if candidates else self.order.pop()
        self.taken.add(name)
        self.left -= 1
        return name
