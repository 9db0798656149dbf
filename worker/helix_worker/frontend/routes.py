"""The plan's pipelines as routes, their health, and KV-aware choice between them.

Stages take KV blocks as a request's tokens arrive, so the front end keeps a ledger of the
blocks its requests hold on every stage (prompt plus tokens so far, in whole blocks) and
admits a request onto a route only while its prompt fits every stage with a watermark of
blocks to spare for the running requests to grow. Other front-end replicas share the stages:
what they hold is the stage's own count of used blocks less this front end's requests there,
as its latest heartbeat reported (the stage is the authority on its memory; when replicas
admit into the same room between two heartbeats, it preempts and they re-prefill). `max_tokens`
is never reserved up front: when running requests outgrow a stage anyway, the stage preempts the
youngest and the front end re-prefills it later. With HELIX_ROUTING=iwrr, routes are the plan's
pipelines picked by the planner's interleaved weighted round robin over their planned flow,
among those whose stages are all up, whose stages can each forward to the next (a stage says
which next hops it cannot reach or may not dial, see `hop_problems`), and that have room now;
adaptive routing (see `adaptive`) composes routes itself and checks them against the same
health and ledger, node by node (a stage's blocks hold all its layers, so the room a request
takes there does not depend on how many of them its hop runs).
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
    def __init__(self, plan: Plan, endpoints: dict[str, str], watermark: float = 0.0) -> None:
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
        self.next_hops: dict[str, tuple[Hop, ...]] = {}  # node -> the hops routes take after it
        for route in self.routes:
            for here, after in zip(route.hops, route.hops[1:]):
                self.next_hops[here.node] = tuple(dict.fromkeys((*self.next_hops.get(here.node, ()), after)))
        self.watermark = watermark
        self.up = {n: False for n in self.nodes}
        self.hop_problems: dict[str, dict[str, str]] = {n: {} for n in self.nodes}  # node -> next node -> why not
        self.capacity = {n: 0 for n in self.nodes}  # KV tokens of each stage's pool (from Describe)
        self.block_tokens = {n: 1 for n in self.nodes}
        self.held = {n: 0 for n in self.nodes}  # blocks this front end's requests hold there
        self.others = {n: 0 for n in self.nodes}  # blocks other front ends' requests hold there (heartbeats)

    def usable(self, route: Route) -> bool:
        """Every stage up, and each able to forward to the next."""
        return (all(self.up[n] for n in route.nodes)
                and not any(b in self.hop_problems[a] for a, b in zip(route.nodes, route.nodes[1:])))

    def set_capacity(self, node: str, tokens: int, block_tokens: int) -> None:
        self.capacity[node], self.block_tokens[node] = tokens, max(1, block_tokens)

    def observe(self, node: str, used_tokens: int, mine_tokens: int) -> bool:
        """A stage reported `used_tokens` of KV held, `mine_tokens` of them by this front end's
        requests; True if what the others hold changed."""
        others = max(0, used_tokens - mine_tokens) // self.block_tokens[node]
        changed, self.others[node] = others != self.others[node], others
        return changed

    def _blocks(self, node: str, tokens: int) -> int:
        return -(-tokens // self.block_tokens[node])

    def room(self, node: str, tokens: int) -> bool:
        """Whether a request of `tokens` tokens fits `node` (whatever layers it runs there: a
        stage's blocks hold all its layers), watermark kept free."""
        total = self._blocks(node, self.capacity[node])
        return total - self.held[node] - self.others[node] - self._blocks(node, tokens) >= self.watermark * total

    def fits(self, route: Route, tokens: int) -> bool:
        """Whether a request of `tokens` tokens fits every stage of `route`."""
        return all(self.room(node, tokens) for node in route.nodes)

    def largest_fit(self) -> int:
        """The most tokens one request can ever hold on some route (a stage's whole pool)."""
        return max(min(self.capacity[n] for n in r.nodes) for r in self.routes)

    def choose(self, tokens: int) -> Route | None:
        """Next route by IWRR among those up with room for `tokens`; None if there is none now."""
        available = [self.usable(r) and self.fits(r, tokens) for r in self.routes]
        try:
            return self.routes[self._iwrr.next(available)]
        except LookupError:
            return None

    def hold(self, route: Route, before: int, after: int) -> None:
        """A request on `route` went from holding `before` tokens to `after` (0: it left)."""
        for node in route.nodes:
            self.held[node] += self._blocks(node, after) - self._blocks(node, before)
