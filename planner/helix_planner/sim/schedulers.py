"""Request schedulers: which route a request takes, chosen once at admission.

The KV-aware schedulers (`iwrr`, `adaptive`) only consider nodes with KV room for the request
and return no route when none has room. The baselines do not know about KV caches: they
pick a route regardless, and the request then waits at the front end until that route has
room (memory is never overcommitted, see `memory`). Flow-following schedulers pick among
the max-flow pipelines; hop-by-hop ones pick each next node among the layout's successors.

* `iwrr` (Helix): interleaved weighted round robin over the pipelines, weights = their flow.
* `swarm`: per hop, the least accumulated priority, each choice adding an exponential
  moving average of that hop's observed time (SWARM parallelism, Ryabinin et al. 2023, App. C).
* `random`: per hop, uniformly at random.
* `shortest-queue`: per hop, the node with the fewest requests in flight.
* `adaptive` (this project): over the whole hop graph, the route with KV room that minimises
  the request's expected time in the system (prompt transfers and queued prompts, then one
  decode step per expected output token, each costing link latency plus a pass whose batch
  grows with the requests already routed through the node).
"""

from collections.abc import Callable, Iterable, Sequence
from typing import Protocol, overload

import numpy as np

from helix_planner.cluster import SINK, SOURCE
from helix_planner.errors import PlanningError
from helix_planner.pipelines import InterleavedWeightedRoundRobin
from helix_planner.sim.compute import GpuNode
from helix_planner.sim.request import Hop, Request
from helix_planner.sim.routes import Route, RouteGraph


class Scheduler(Protocol):
    name: str

    def choose(self, request: Request, now: float) -> Route | None:
        """A route for `request` at time `now`, or None to keep it waiting."""

    def prompt_stage_done(self, request: Request, seconds: float) -> None:
        """`request`'s prompt finished its current stage `seconds` after it was sent there."""

    def released(self, request: Request) -> None:
        """`request` left (finished, or rejected as too long) and freed the route it was given."""


class _Quiet:
    """Schedulers that learn nothing from progress reports."""

    def prompt_stage_done(self, request: Request, seconds: float) -> None:
        return None

    def released(self, request: Request) -> None:
        return None


class _CountsInFlight(_Quiet):
    """Schedulers that weigh nodes by the admitted requests routed through them."""

    def __init__(self, graph: RouteGraph) -> None:
        self.graph = graph
        self.in_flight: dict[str, int] = {name: 0 for name in graph.successors}

    def _admitted(self, route: Route | None) -> Route | None:
        for hop in route or ():
            self.in_flight[hop.node.name] += 1
        return route

    def released(self, request: Request) -> None:
        for hop in request.route:
            self.in_flight[hop.node.name] -= 1


def _pipelines(graph: RouteGraph, name: str) -> None:
    if not graph.pipelines:
        raise PlanningError(f"scheduler {name!r} follows the max flow, but this layout carries no flow")


class IwrrScheduler(_Quiet):
    name = "iwrr"

    def __init__(self, graph: RouteGraph, rng: np.random.Generator) -> None:
        _pipelines(graph, self.name)
        self.routes = graph.pipelines
        self.iwrr = InterleavedWeightedRoundRobin(list(graph.weights), resolution=100)
        self.blocking = [0] * len(self.routes)  # per route, the hop that last had no KV room

    def choose(self, request: Request, now: float) -> Route | None:
        available = _RoomOnRoutes(self.routes, request, self.blocking)
        if not any(available):
            return None
        return self.routes[self.iwrr.next(available)]


class _RoomOnRoutes(Sequence[bool]):
    """Whether each route has KV room for a request, found only for the routes IWRR looks at,
    trying first the hop that was full last time: a saturated fleet has hundreds of routes,
    mostly full, and an admission would otherwise check every hop of every one."""

    def __init__(self, routes: tuple[Route, ...], request: Request, blocking: list[int]) -> None:
        self.routes, self.need, self.blocking = routes, request.worst_case_tokens, blocking
        self.known: dict[int, bool] = {}

    def __len__(self) -> int:
        return len(self.routes)

    @overload
    def __getitem__(self, index: int) -> bool: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[bool]: ...

    def __getitem__(self, index: int | slice) -> bool | Sequence[bool]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        fits = self.known.get(index)
        if fits is None:
            fits = self.known[index] = self._fits(index)
        return fits

    def _fits(self, index: int) -> bool:
        route, need = self.routes[index], self.need
        hop = route[self.blocking[index]]
        if not hop.node.kv.fits(need * hop.layers):
            return False
        for position, hop in enumerate(route):
            if not hop.node.kv.fits(need * hop.layers):
                self.blocking[index] = position
                return False
        return True


class RandomScheduler(_Quiet):
    name = "random"

    def __init__(self, graph: RouteGraph, rng: np.random.Generator) -> None:
        self.graph, self.rng = graph, rng

    def choose(self, request: Request, now: float) -> Route | None:
        return self.graph.walk(lambda _previous, room: room[int(self.rng.integers(len(room)))])


class ShortestQueueScheduler(_CountsInFlight):
    name = "shortest-queue"

    def __init__(self, graph: RouteGraph, rng: np.random.Generator) -> None:
        super().__init__(graph)

    def _fewest(self, previous: str, room: list[GpuNode]) -> GpuNode:
        return min(room, key=lambda n: self.in_flight[n.name])

    def choose(self, request: Request, now: float) -> Route | None:
        return self._admitted(self.graph.walk(self._fewest))


class SwarmScheduler(_Quiet):
    name = "swarm"
    initial_estimate = 0.05  # seconds before a hop was observed, and smoothing: the paper's artifact's values
    smoothing = 0.8

    def __init__(self, graph: RouteGraph, rng: np.random.Generator) -> None:
        self.graph = graph
        self.priority: dict[tuple[str, str], float] = {}
        self.estimate: dict[tuple[str, str], float] = {}

    def _pick(self, previous: str, room: list[GpuNode]) -> GpuNode:
        node = min(room, key=lambda n: self.priority.get((previous, n.name), 0.0))
        edge = (previous, node.name)
        self.priority[edge] = self.priority.get(edge, 0.0) + self.estimate.get(edge, self.initial_estimate)
        return node

    def choose(self, request: Request, now: float) -> Route | None:
        return self.graph.walk(self._pick)

    def prompt_stage_done(self, request: Request, seconds: float) -> None:
        previous = request.route[request.stage - 1].node.name if request.stage else SOURCE
        edge = (previous, request.route[request.stage].node.name)
        old = self.estimate.get(edge, self.initial_estimate)
        self.estimate[edge] = self.smoothing * seconds + (1 - self.smoothing) * old


class AdaptiveScheduler(_CountsInFlight):
    name = "adaptive"
    initial_output = 240.0  # expected output tokens before any request finished (Helix's constant)

    def __init__(self, graph: RouteGraph, rng: np.random.Generator) -> None:
        super().__init__(graph)
        self.outputs, self.done = 0, 0

    def choose(self, request: Request, now: float) -> Route | None:
        """The route with room that minimises the request's expected time in the system.

        Time in the system is what a request holds KV cache for, so with the caches full the
        shortest expected stay gives the most requests per second (Little's law): queued
        transfers, prompt transfers and queued prompts once, then one decode step per expected
        output token.
        """
        graph, need, prompt = self.graph, request.worst_case_tokens, request.input_tokens
        steps = self.outputs / self.done if self.done else self.initial_output
        memo: dict[tuple[str, int], tuple[float, Route] | None] = {}

        def link(a: str, b: str) -> float:
            channel = graph.links[(a, b)]
            return channel.backlog(now) + steps * channel.latency + (prompt + steps) * channel.seconds_per_token

        def best(node: GpuNode, position: int) -> tuple[float, Route] | None:
            """Cheapest way from entering `node` at layer `position` back to the front end."""
            key = (node.name, position)
            if key not in memo:
                memo[key] = None
                layers = node.end - position
                if node.kv.fits(need * layers):
                    here = (node.prompt_seconds(prompt, layers)
                            + steps * node.step_seconds(self.in_flight[node.name] + 1, layers))
                    hop = Hop(node, position, node.end)
                    if node.end == graph.num_layers:
                        memo[key] = (here + link(node.name, SINK), (hop,))
                    else:
                        rest = _cheapest((best(nxt, node.end), link(node.name, nxt.name))
                                         for nxt in graph.successors[node.name])
                        if rest is not None:
                            memo[key] = (here + rest[0], (hop, *rest[1]))
            return memo[key]

        found = _cheapest((best(node, 0), link(SOURCE, node.name)) for node in graph.entry)
        return self._admitted(found[1] if found else None)

    def released(self, request: Request) -> None:
        super().released(request)
        if request.generated:
            self.outputs += request.generated
            self.done += 1


def _cheapest(options: Iterable[tuple[tuple[float, Route] | None, float]]) -> tuple[float, Route] | None:
    """The least (cost + extra, route) among `options` whose first part exists."""
    costed = [(found[0] + extra, found[1]) for found, extra in options if found is not None]
    return min(costed, key=lambda option: option[0]) if costed else None


SCHEDULERS = {cls.name: cls for cls in (IwrrScheduler, SwarmScheduler, RandomScheduler, ShortestQueueScheduler,
                                        AdaptiveScheduler)}


def scheduler_class(name: str) -> Callable[[RouteGraph, np.random.Generator], Scheduler]:
    """The scheduler called `name`; an unknown name is a user error that lists the known ones."""
    if name not in SCHEDULERS:
        raise PlanningError(f"unknown scheduler {name!r}: use one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name]


def make_scheduler(name: str, graph: RouteGraph, rng: np.random.Generator) -> Scheduler:
    return scheduler_class(name)(graph, rng)
