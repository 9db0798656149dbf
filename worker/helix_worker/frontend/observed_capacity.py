"""The front end's observed capacity: every stage's recent steps and inbound frames, as one document.

The heartbeat asks every stage for its StageInfo every few seconds anyway; each answer carries
the stage's recent window of step times and of the activation frames that reached it (see
`engine.observations`). The latest answer per stage, labelled with the plan's GPU type and
layers of that node, is served as JSON at `GET /v2/helix/observed` (format and meaning:
`helix_planner.observed`), which the operator and `helix up` poll to keep effective profiles,
and summarised as Prometheus gauges. A frame from a peer that is not a node of the plan (a
front end's token ids) names no link of the plan and is left out.
"""

import statistics

from aiohttp import web

from helix_planner.observed import PATH, LinkSample, NodeObservation, Observed, StepSample, link_rate
from helix_planner.plan_format import Plan
from helix_proto import helix_stage_pb2 as pb
from helix_worker.metrics import FrontendMetrics


def _steps(samples: list[pb.StepSample]) -> tuple[StepSample, ...]:
    return tuple(StepSample(s.size, s.layers, s.seconds) for s in samples)


def _per_layer(samples: tuple[StepSample, ...]) -> float | None:
    values = [s.seconds / s.layers for s in samples if s.layers > 0]
    return statistics.median(values) if values else None


class ObservedCapacity:
    def __init__(self, plan: Plan, metrics: FrontendMetrics) -> None:
        self.plan_hash = plan.plan_hash
        self.metrics = metrics
        self._planned = {n.name: n for n in plan.nodes}
        self._nodes: dict[str, NodeObservation] = {}
        self._links: dict[str, dict[str, tuple[LinkSample, ...]]] = {}  # receiving node -> peer -> frames

    def record(self, node: str, info: pb.StageInfo) -> None:
        """A stage's heartbeat answer: its window replaces the one it gave before."""
        planned = self._planned.get(node)
        if planned is None:
            return
        observation = NodeObservation(planned.gpu_type, (planned.start, planned.end),
                                      _steps(list(info.decode_steps)), _steps(list(info.prefill_steps)))
        self._nodes[node] = observation
        frames: dict[str, list[LinkSample]] = {}
        for frame in info.inbound_frames:
            if frame.peer in self._planned:
                frames.setdefault(frame.peer, []).append(LinkSample(frame.bytes, frame.seconds))
        self._links[node] = {peer: tuple(samples) for peer, samples in frames.items()}
        for phase, steps in (("decode", observation.decode), ("prefill", observation.prefill)):
            self.metrics.observed_step(node, phase, _per_layer(steps))
        for peer, samples in self._links[node].items():
            self.metrics.observed_link(peer, node, link_rate(samples))

    def observed(self) -> Observed:
        links = {(peer, node): samples for node, by_peer in self._links.items() for peer, samples in by_peer.items()}
        return Observed(self.plan_hash, dict(self._nodes), links)


def add_observed_route(app: web.Application, capacity: ObservedCapacity) -> None:
    async def observed(_: web.Request) -> web.Response:
        return web.json_response(capacity.observed().to_document())

    app.router.add_get(PATH, observed)
