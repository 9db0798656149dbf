"""Adaptive routing: each request takes the route of least expected completion time.

The served counterpart of the simulator's `adaptive` scheduler. Over the plan's hop graph (see
`hop_graph`), among routes whose stages are up, can forward to each other and have KV room,
it picks the one minimising what the request will spend in the system: its prefill once, then
one decode step per expected output token (the mean of finished requests' outputs, at most what
the request may still generate), each step costing the links it crosses and a pass at every
node it visits, a pass growing with the requests batched there.

What it knows is measured, not planned:
* links: a one-way latency of half the front end's heartbeat round trip to a stage (the least
  of the latest few), and between two stages half the difference of theirs (exact for stages on
  a line from the front end, a lower bound otherwise);
* passes: seconds per layer of a lone decode pass at each node, in proportion to the plan's
  per-layer capacity, times a fleet-wide scale (the median, over recent decode steps, of what
  the links leave of a step's observed round trip over what the passes predict), times a
  correction per node that each step through it nudges by how far that step's route ran from
  the median (bounded nudges: the requests batched in one slow step all report it at once). A
  node carrying none of this front end's requests forgets its correction over a few heartbeats,
  so that one avoided while slow is tried again;
* queues: this front end's requests through each node, plus what the stage last reported
  running or waiting for other front ends.
"""

import statistics
from collections import deque
from collections.abc import Iterable

from helix_worker.frontend.hop_graph import HopGraph
from helix_worker.frontend.routes import Route, RouteTable
from helix_worker.protocol import Hop

GROWTH = 0.25  # a pass's extra time per request batched with it, as a share of a lone pass
PREFILL_TOKENS = 32  # prompt tokens a prefill pass takes in the time of a decode pass (rough)
NUDGE = 0.02  # exponent of one step's (bounded) deviation applied to its nodes' corrections
BOUND = 4.0  # a correction, and one step's deviation, stay within [1/BOUND, BOUND]
IDLE_FORGET = 0.9  # per heartbeat, exponent applied to the correction of a node carrying none of our requests
INITIAL_PASS = 0.001  # seconds per layer of a lone pass at the fastest node, before any observation
RTT_SAMPLES = 8
SCALE_SAMPLES = 64

Costed = tuple[float, tuple[Hop, ...]]


class AdaptiveRouter:
    def __init__(self, table: RouteTable, graph: HopGraph, capacity: dict[str, float]) -> None:
        """`capacity`: the plan's tokens/s per node over its layers (the prior for pass times)."""
        self.table, self.graph = table, graph
        per_layer = {n: capacity.get(n, 0.0) * (h.end - h.start) for n, h in graph.hops.items()}
        fastest = max(per_layer.values(), default=0.0)
        self.planned_pass = {n: INITIAL_PASS * fastest / c if c > 0 else INITIAL_PASS for n, c in per_layer.items()}
        self.scales: deque[float] = deque(maxlen=SCALE_SAMPLES)  # observed over predicted passes, recent steps
        self.correction = {n: 1.0 for n in graph.hops}
        self.rtts: dict[str, deque[float]] = {n: deque(maxlen=RTT_SAMPLES) for n in graph.hops}
        self.mine = {n: 0 for n in graph.hops}  # this front end's admitted requests through each node
        self.others = {n: 0 for n in graph.hops}  # other front ends' requests there, as last reported
        self.outputs, self.finished_requests = 0, 0

    # What the coordinator tells it -----------------------------------------------------------

    def heartbeat(self, node: str, seconds: float, running: int, waiting: int) -> None:
        """A heartbeat to `node` took `seconds`; it has `running` + `waiting` requests of all front ends."""
        self.rtts[node].append(seconds)
        self.others[node] = max(0, running + waiting - self.mine[node])
        if self.mine[node] == 0:
            self.correction[node] **= IDLE_FORGET

    def admitted(self, route: Route) -> None:
        for node in route.nodes:
            self.mine[node] += 1

    def released(self, route: Route) -> None:
        for node in route.nodes:
            self.mine[node] -= 1

    def finished(self, generated: int) -> None:
        """A request finished after `generated` tokens: the expected output learns from it."""
        self.outputs += generated
        self.finished_requests += 1

    def observed(self, route: Route, seconds: float) -> None:
        """One decode step through `route` took `seconds`, front end to front end."""
        passes = sum(self._pass(h) for h in route.hops)
        ratio = max(seconds - self.step_links(route.nodes), 0.1 * passes) / passes
        self.scales.append(ratio * self.scale)
        nudge = min(max(ratio, 1 / BOUND), BOUND) ** NUDGE
        for node in route.nodes:
            self.correction[node] = min(max(self.correction[node] * nudge, 1 / BOUND), BOUND)

    @property
    def scale(self) -> float:
        """Observed over planned pass times, fleet-wide (1 before any observation)."""
        return statistics.median(self.scales) if self.scales else 1.0

    # The choice ----------------------------------------------------------------------------

    def choose(self, tokens: int, prompt: int, remaining: int) -> Route | None:
        """The usable route with KV room for `tokens` on every stage of least expected completion
        time for a request of `prompt` tokens that may generate `remaining` more; None if none."""
        mean = self.outputs / self.finished_requests if self.finished_requests else remaining
        steps = min(float(remaining), mean)
        passes = steps + 1 + prompt / PREFILL_TOKENS  # the prefill, then one pass per decode step
        trips = steps + 1  # link crossings: the prompt's, then one per step
        table, memo = self.table, dict[tuple[str, int], Costed | None]()

        def best(hop: Hop) -> Costed | None:
            """Cheapest way from entering `hop` back to the front end."""
            key = (hop.node, hop.start)
            if key not in memo:
                memo[key] = None
                if table.up[hop.node] and table.room(hop.node, tokens):
                    here = passes * self._pass(hop)
                    if hop.end == self.graph.num_layers:
                        memo[key] = (here + trips * self._link(hop.node, None), (hop,))
                    else:
                        blocked = table.hop_problems[hop.node]
                        rest = _cheapest((best(nxt), trips * self._link(hop.node, nxt.node))
                                         for nxt in self.graph.holding(hop.end) if nxt.node not in blocked)
                        if rest is not None:
                            memo[key] = (here + rest[0], (hop, *rest[1]))
            return memo[key]

        found = _cheapest((best(hop), trips * self._link(None, hop.node)) for hop in self.graph.holding(0))
        return Route(-1, found[1], 0.0) if found else None

    def step_links(self, nodes: tuple[str, ...]) -> float:
        """The link latencies one step through `nodes` crosses, front end to front end."""
        ends: list[str | None] = [None, *nodes, None]
        return sum(self._link(a, b) for a, b in zip(ends, ends[1:]))

    def _pass(self, hop: Hop) -> float:
        node = hop.node
        seconds = self.scale * self.planned_pass[node] * self.correction[node]
        return (hop.end - hop.start) * seconds * (1 + GROWTH * (self.mine[node] + self.others[node]))

    def _link(self, a: str | None, b: str | None) -> float:
        """One-way latency from `a` to `b` (None: the front end)."""
        return abs(self._rtt(a) - self._rtt(b)) / 2

    def _rtt(self, node: str | None) -> float:
        return min(self.rtts[node], default=0.0) if node is not None else 0.0


def _cheapest(options: Iterable[tuple[Costed | None, float]]) -> Costed | None:
    """The least (cost + extra, hops) among `options` whose first part exists."""
    costed = [(found[0] + extra, found[1]) for found, extra in options if found is not None]
    return min(costed, key=lambda option: option[0]) if costed else None
