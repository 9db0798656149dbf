"""Request schedulers: which route a request takes, chosen once at admission.

Every scheduler only considers nodes with KV room for the request (see `memory`); when it
finds no route, the request waits at the front end. Flow-following schedulers pick among
the max-flow pipelines; hop-by-hop ones pick each next node among the layout's successors.

* `iwrr` (Helix): interleaved weighted round robin over the pipelines, weights = their flow.
* `swarm`: per hop, the least accumulated priority, each choice adding an exponential
  moving average of that hop's observed time (SWARM parallelism, Ryabinin et al. 2023, App. C).
* `random`: per hop, uniformly at random.
* `shortest-queue`: per hop, the node with the fewest requests in flight.
* `adaptive` (this project): the pipeline whose busiest node has the least work in flight
  per unit of its flow share, so shares follow the flow while load and KV permit, and
  shift away from nodes that fall behind.
"""

from typing import Protocol

import numpy as np

from helix_planner.cluster import SOURCE
from helix_planner.errors import PlanningError
from helix_planner.pipelines import InterleavedWeightedRoundRobin
from helix_planner.sim.compute import GpuNode
from helix_planner.sim.request import Request
from helix_planner.sim.routes import Route, RouteGraph, route_fits


class Scheduler(Protocol):
    name: str

    def choose(self, request: Request) -> Route | None:
        """A route with KV room for `request`, or None to keep it waiting."""

    def stage_done(self, request: Request, seconds: float) -> None:
        """`request` finished its current stage `seconds` after it was sent there."""

    def finished(self, request: Request) -> None:
        """`request` completed and released its route."""


class _Quiet:
    """Schedulers that learn nothing from progress reports."""

    def stage_done(self, request: Request, seconds: float) -> None:
        return None

    def finished(self, request: Request) -> None:
        return None


def _pipelines(graph: RouteGraph, name: str) -> None:
    if not graph.pipelines:
        raise PlanningError(f"scheduler {name!r} follows the max flow, but this layout carries no flow")


class IwrrScheduler(_Quiet):
    name = "iwrr"

    def __init__(self, graph: RouteGraph, rng: np.random.Generator) -> None:
        _pipelines(graph, self.name)
        self.routes = graph.pipelines
        self.iwrr = InterleavedWeightedRoundRobin(list(graph.weights), resolution=100)

    def choose(self, request: Request) -> Route | None:
        available = [route_fits(route, request) for route in self.routes]
        if not any(available):
            return None
        return self.routes[self.iwrr.next(available)]


class RandomScheduler(_Quiet):
    name = "random"

    def __init__(self, graph: RouteGraph, rng: np.random.Generator) -> None:
        self.graph, self.rng = graph, rng

    def choose(self, request: Request) -> Route | None:
        return self.graph.walk(request, lambda _previous, room: room[int(self.rng.integers(len(room)))])


class ShortestQueueScheduler:
    name = "shortest-queue"

    def __init__(self, graph: RouteGraph, rng: np.random.Generator) -> None:
        self.graph = graph
        self.in_flight: dict[str, int] = {name: 0 for name in graph.successors}

    def choose(self, request: Request) -> Route | None:
        route = self.graph.walk(request, lambda _previous, room: min(room, key=lambda n: self.in_flight[n.name]))
        for hop in route or ():
            self.in_flight[hop.node.name] += 1
        return route

    def stage_done(self, request: Request, seconds: float) -> None:
        return None

    def finished(self, request: Request) -> None:
        for hop in request.route:
            self.in_flight[hop.node.name] -= 1


class SwarmScheduler:
    name = "swarm"
    initial_estimate = 0.1  # seconds, before a hop has been observed
    smoothing = 0.3

    def __init__(self, graph: RouteGraph, rng: np.random.Generator) -> None:
        self.graph = graph
        self.priority: dict[tuple[str, str], float] = {}
        self.estimate: dict[tuple[str, str], float] = {}

    def _pick(self, previous: str, room: list[GpuNode]) -> GpuNode:
        node = min(room, key=lambda n: self.priority.get((previous, n.name), 0.0))
        edge = (previous, node.name)
        self.priority[edge] = self.priority.get(edge, 0.0) + self.estimate.get(edge, self.initial_estimate)
        return node

    def choose(self, request: Request) -> Route | None:
        return self.graph.walk(request, self._pick)

    def stage_done(self, request: Request, seconds: float) -> None:
        if not request.prompt:
            return
        previous = request.route[request.stage - 1].node.name if request.stage else SOURCE
        edge = (previous, request.route[request.stage].node.name)
        old = self.estimate.get(edge, self.initial_estimate)
        self.estimate[edge] = self.smoothing * seconds + (1 - self.smoothing) * old

    def finished(self, request: Request) -> None:
        return None


class AdaptiveScheduler:
    name = "adaptive"

    def __init__(self, graph: RouteGraph, rng: np.random.Generator) -> None:
        _pipelines(graph, self.name)
        self.routes = graph.pipelines
        share: dict[str, float] = {}
        for route, weight in zip(graph.pipelines, graph.weights):
            for hop in route:
                share[hop.node.name] = share.get(hop.node.name, 0.0) + weight
        self.share = share
        self.load: dict[str, float] = {name: 0.0 for name in share}

    def _pressure(self, route: Route) -> float:
        return max(self.load[hop.node.name] / self.share[hop.node.name] for hop in route)

    def choose(self, request: Request) -> Route | None:
        fitting = [route for route in self.routes if route_fits(route, request)]
        if not fitting:
            return None
        route = min(fitting, key=self._pressure)
        for hop in route:
            self.load[hop.node.name] += hop.end - hop.start
        return route

    def stage_done(self, request: Request, seconds: float) -> None:
        return None

    def finished(self, request: Request) -> None:
        for hop in request.route:
            self.load[hop.node.name] -= hop.end - hop.start


SCHEDULERS = {cls.name: cls for cls in (IwrrScheduler, SwarmScheduler, RandomScheduler, ShortestQueueScheduler,
                                        AdaptiveScheduler)}


def make_scheduler(name: str, graph: RouteGraph, rng: np.random.Generator) -> Scheduler:
    if name not in SCHEDULERS:
        raise PlanningError(f"unknown scheduler {name!r}: use one of {', '.join(SCHEDULERS)}")
    return SCHEDULERS[name](graph, rng)
