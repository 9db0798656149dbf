"""The plan's pipelines as routes, their health, and KV-aware choice between them.

A request needs `prompt + max_tokens` KV tokens on every stage of its route for its whole
life, so that is what admission reserves (never an average output length). Routes are
picked by the planner's interleaved weighted round robin over their planned flow, among
those whose stages are all up and have room now.
"""

from dataclasses import dataclass

from helix_planner.pipelines import InterleavedWeightedRoundRobin
from helix_planner.plan_format import Plan
from helix_worker.errors import ServingError
from helix_worker.protocol import Hop


@dataclass(frozen=True)
class Route:
    index: int
    hops: tuple[Hop, ...]
    weight: float

    @property
    def nodes(self) -> tuple[str, ...]:
        return tuple(h.node for h in self.hops)

    @property
    def name(self) -> str:
        return "->".join(self.nodes)


class RouteTable:
    def __init__(self, plan: Plan, endpoints: dict[str, str]) -> None:
        if not plan.pipelines:
            raise ServingError("the plan has no pipelines: replan with at least one node chain covering all layers")
        missing = sorted({s.node for p in plan.pipelines for s in p.stages} - set(endpoints))
        if missing:
            raise ServingError(f"no address for plan node(s) {', '.join(missing)}: give --endpoint NODE=HOST:PORT")
        self.routes = [Route(i, tuple(Hop(s.node, endpoints[s.node], s.start, s.end) for s in p.stages),
                             p.tokens_per_second) for i, p in enumerate(plan.pipelines)]
        weights = [r.weight if r.weight > 0 else 1.0 for r in self.routes]
        self._iwrr = InterleavedWeightedRoundRobin(weights)
        self.nodes = sorted({n for r in self.routes for n in r.nodes})
        self.up = {n: False for n in self.nodes}
        self.capacity = {n: 0 for n in self.nodes}
        self.reserved = {n: 0 for n in self.nodes}

    def usable(self, route: Route) -> bool:
        return all(self.up[n] for n in route.nodes)

    def fits(self, route: Route, tokens: int) -> bool:
        return all(self.capacity[n] - self.reserved[n] >= tokens for n in route.nodes)

    def largest_fit(self) -> int:
        """The most tokens one request can ever reserve on some route."""
        return max(min(self.capacity[n] for n in r.nodes) for r in self.routes)

    def choose(self, tokens: int) -> Route | None:
        """Next route by IWRR among those up with room for `tokens`; None if there is none now."""
        available = [self.usable(r) and self.fits(r, tokens) for r in self.routes]
        try:
            return self.routes[self._iwrr.next(available)]
        except LookupError:
            return None

    def reserve(self, route: Route, tokens: int) -> None:
        for node in route.nodes:
            self.reserved[node] += tokens

    def unreserve(self, route: Route, tokens: int) -> None:
        for node in route.nodes:
            self.reserved[node] -= tokens
