"""An analytical estimate of a placement's saturated serving: decode tokens/s and time to first token.

Simulating a 1,000-GPU fleet saturated costs minutes (its work is every request's every
decode step at every stage), so the serving objective judges large fleets with this model
and the benchmark checks it against the simulator. It follows the simulator's offline protocol:

* KV room decides how many requests run. Admission reserves prompt + output tokens times the
  layers of each hop and IWRR spreads requests over the pipelines by their flow, so requests
  fill the pipelines in proportion to their weights until a node's cache (up to its high-water
  mark) is full, then the pipelines through that node stop growing (progressive filling).
* Little's law on each pipeline: decode tokens/s = requests in it / one decode round trip.
  A round trip is, per hop, waiting for the pass under way and running one (1.5 passes, as
  the simulator's own `GpuNode.step_seconds` estimates) plus the link's latency and the
  transfer of the group the sender's pass hands over (stretched as the link gets busy).
  A node's decode batch is what it must carry: the smallest batch whose rate meets the
  requests/s through it, after the share of its time that prompts take (one prompt per
  finished request). A node that cannot carry its load at its largest batch throttles the
  pipelines through it.
* Time to first token: the prompt's trip through its route, each hop waiting for the pass
  under way and running the prompt with a decode batch.

It sees averages, not the bunches in which requests travel a pipeline in the simulator
(nodes then wait idle for the next bunch), so it is optimistic: on the paper's 24-node
clusters it gives 1.1-3.4x the simulated decode throughput, and the simulator's KV-bound
count of requests in flight within 1%. It judges candidates; the simulator measures the
chosen one (`bench/planner.py` shows both).
"""

import bisect
import math
from dataclasses import dataclass

from helix_planner.cluster import SINK, SOURCE
from helix_planner.sim.compute import NodeProfile, node_profile
from helix_planner.sim.simulation import Scenario

_ROUNDS = 200  # at most, of the damped fixed-point iteration
_SETTLED = 1e-4  # it stops once no pipeline's rate moves by more than this share


@dataclass(frozen=True)
class ServingEstimate:
    decode_throughput: float  # tokens/s at the front end, saturated
    ttft: float  # seconds from admission to the first token, a typical request
    in_flight: float  # requests that KV room admits


@dataclass(frozen=True)
class _Hop:
    sender: str
    node: str
    layers: int
    link_latency: float  # into this hop
    link_seconds_per_token: float


def estimate_serving(scenario: Scenario, input_tokens: float, output_tokens: float,
                     kv_high_water: float = 0.9) -> ServingEstimate:
    """Saturated decode tokens/s, time to first token and requests in flight for `scenario`
    serving requests of `input_tokens` prompt and `output_tokens` output tokens (means)."""
    cluster, model = scenario.cluster, scenario.model
    gpu = {n.name: n.gpu for n in cluster.nodes}
    routes: list[list[_Hop]] = []
    weights: list[float] = []
    for pipeline in scenario.pipelines:
        if pipeline.tokens_per_second <= 0:
            continue
        hops, previous = [], SOURCE
        for stage in pipeline.stages:
            hops.append(_hop(scenario, previous, stage.node, stage.end - stage.start))
            previous = stage.node
        routes.append(hops)
        weights.append(pipeline.tokens_per_second)
    if not routes:
        return ServingEstimate(0.0, math.inf, 0.0)
    profiles: dict[tuple[str, int], NodeProfile] = {}
    for name, (start, end) in scenario.layout.items():
        if (gpu[name], end - start) not in profiles:
            profiles[(gpu[name], end - start)] = node_profile(scenario.catalog, model, gpu[name], end - start)
    held = {name: profiles[(gpu[name], end - start)] for name, (start, end) in scenario.layout.items()}
    servers = {name: _Server(profile, scenario.layout[name][1] - scenario.layout[name][0])
               for name, profile in held.items()}
    requests = _fill_kv(routes, weights, held, input_tokens + output_tokens, kv_high_water)
    if scenario.max_in_flight:
        total = sum(requests)
        requests = [r * min(1.0, scenario.max_in_flight / total) for r in requests] if total else requests
    for route in routes:
        route.append(_hop(scenario, route[-1].node, SINK, 0))
    through: dict[str, list[int]] = {}
    over: dict[tuple[str, str], list[int]] = {}
    for i, route in enumerate(routes):
        for hop in route:
            if hop.node != SINK:
                through.setdefault(hop.node, []).append(i)
            over.setdefault((hop.sender, hop.node), []).append(i)
    spt = {(hop.sender, hop.node): hop.link_seconds_per_token for route in routes for hop in route}
    prompt_per_decode = input_tokens / output_tokens  # one prompt per finished request
    rates = [0.0] * len(routes)
    passes = {name: server.passes[0] for name, server in servers.items()}  # mean seconds of one pass
    passes[SINK] = 0.0
    transfer: dict[tuple[str, str], float] = {}
    for _ in range(_ROUNDS):
        throttle = [1.0] * len(routes)
        for name, members in through.items():
            load = sum(rates[i] for i in members)
            passes[name], ratio = servers[name].batch_for(load, load * prompt_per_decode)
            if ratio < 1:
                for i in members:
                    throttle[i] = min(throttle[i], ratio)
        for (sender, receiver), members in over.items():
            # A pass's decode steps for one receiver travel as one transfer: each waits for the group.
            load = sum(rates[i] for i in members)
            busy = load * spt[(sender, receiver)] * (1 + prompt_per_decode)
            group = load * passes[receiver if sender == SOURCE else sender]
            transfer[(sender, receiver)] = max(1.0, group) * spt[(sender, receiver)] / max(0.05, 1.0 - busy)
            if busy > 1:
                for i in members:
                    throttle[i] = min(throttle[i], 1.0 / busy)
        moved = 0.0
        for i, route in enumerate(routes):
            trip = sum(1.5 * passes[hop.node] + hop.link_latency + transfer[(hop.sender, hop.node)] for hop in route)
            target = min(requests[i] / trip, rates[i] * throttle[i] if throttle[i] < 1 else math.inf)
            updated = 0.5 * rates[i] + 0.5 * target
            moved = max(moved, abs(updated - rates[i]) / max(updated, 1e-12))
            rates[i] = updated
        if moved < _SETTLED:
            break
    ttfts = [sum(1.5 * passes[hop.node] + hop.layers * held[hop.node].prompt(input_tokens) + hop.link_latency
                 + transfer[(hop.sender, hop.node)] + hop.link_seconds_per_token * input_tokens
                 for hop in route if hop.node != SINK) + route[-1].link_latency for route in routes]
    total_rate = sum(rates)
    ttft = sum(t * r for t, r in zip(ttfts, rates)) / total_rate if total_rate > 0 else math.inf
    return ServingEstimate(total_rate, ttft, sum(requests))


def _link(scenario: Scenario, src: str, dst: str) -> tuple[float, float]:
    """(latency, seconds per token) of the link src -> dst (0, 0 without one)."""
    link = scenario.cluster.link(src, dst)
    if link is None:
        return 0.0, 0.0
    per_token = (scenario.model.token_bytes if SOURCE in (src, dst) or SINK in (src, dst)
                 else scenario.model.activation_bytes_per_token)
    return link.latency, per_token / link.bandwidth


def _hop(scenario: Scenario, previous: str, node: str, layers: int) -> _Hop:
    latency, per_token = _link(scenario, previous, node)
    return _Hop(previous, node, layers, latency, per_token)


def _fill_kv(routes: list[list[_Hop]], weights: list[float], held: dict[str, NodeProfile], need: float,
             high_water: float) -> list[float]:
    """Requests per route when admissions follow the weights until caches are full (progressive filling)."""
    room = {name: profile.kv_capacity * high_water for name, profile in held.items()}
    requests = [0.0] * len(routes)
    active = set(range(len(routes)))
    while active:
        use: dict[str, float] = {}
        for i in active:
            for hop in routes[i]:
                use[hop.node] = use.get(hop.node, 0.0) + weights[i] * need * hop.layers
        step = min(room[name] / amount for name, amount in use.items() if amount > 0)
        full = set()
        for name, amount in use.items():
            room[name] -= amount * step
            if room[name] <= 1e-9 * held[name].kv_capacity:
                full.add(name)
        for i in active:
            requests[i] += weights[i] * step
        active = {i for i in active if not any(hop.node in full for hop in routes[i])}
    return requests


class _Server:
    """One node's decode rates by batch size, tabled once: the fixed point asks for them often."""

    def __init__(self, profile: NodeProfile, layers: int) -> None:
        self.layers = layers
        self.passes = [layers * profile.decode(b) for b in range(1, profile.decode_max_sequences + 1)]
        self.rates = [b / seconds for b, seconds in enumerate(self.passes, start=1)]
        self.prompt_seconds_per_token = layers * profile.prompt(profile.prompt_max_tokens) / profile.prompt_max_tokens

    def batch_for(self, decodes: float, prompt_tokens: float) -> tuple[float, float]:
        """Beside `prompt_tokens`/s of prompts, the mean pass (prompts' share of the time stretches
        the decode passes) of the smallest batch that carries `decodes` steps/s, and the share of
        that load the node can carry (1 when all)."""
        free = max(1e-9, 1.0 - prompt_tokens * self.prompt_seconds_per_token)
        if decodes <= 0:
            return self.passes[0], 1.0
        index = bisect.bisect_left(self.rates, decodes / free)
        if index >= len(self.rates):
            return self.passes[-1] / free, self.rates[-1] * free / decodes
        return self.passes[index] / free, 1.0
