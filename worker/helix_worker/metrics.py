"""Prometheus metrics of a stage and of the front end, each in its own registry (no globals).

Token throughput is the rate of the token counters; latencies are histograms: per step on a
stage, per hop (time a batch spends queued + computed on a stage), per decode step and to
the first token at the front end.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from helix_worker.engine.kv_pool import KVUsage

CONTENT_TYPE = CONTENT_TYPE_LATEST
_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class StageMetrics:
    def __init__(self, node: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"node": node}
        self._chunks = Counter("helix_stage_chunks", "request chunks processed", ["node"], registry=self.registry).labels(**labels)
        self._tokens = Counter("helix_stage_tokens", "token rows processed (rate = tokens/s)", ["node"],
                               registry=self.registry).labels(**labels)
        self._batch = Histogram("helix_stage_batch_requests", "requests per step", ["node"], buckets=_BATCH,
                                registry=self.registry).labels(**labels)
        self._step = Histogram("helix_stage_step_seconds", "compute time of one step", ["node"], buckets=_LATENCY,
                               registry=self.registry).labels(**labels)
        self._hop = Histogram("helix_stage_hop_seconds", "time a chunk spends on this stage, queue included",
                              ["node"], buckets=_LATENCY, registry=self.registry).labels(**labels)
        self._queue = Gauge("helix_stage_queue_length", "chunks waiting for a step", ["node"],
                            registry=self.registry).labels(**labels)
        self._kv = Gauge("helix_stage_kv_tokens", "KV cache tokens by state (used: whole blocks held)",
                         ["node", "state"], registry=self.registry)
        self._active = Gauge("helix_stage_active_requests", "requests holding KV cache", ["node"],
                             registry=self.registry).labels(**labels)
        self._preempted = Counter("helix_stage_preemptions", "requests preempted when KV blocks ran out "
                                  "(their front end re-prefills them)", ["node"], registry=self.registry).labels(**labels)
        self.node = node

    def step(self, requests: int, tokens: int, seconds: float, queued: int, usage: KVUsage,
             hop_seconds: list[float], preempted: int) -> None:
        for value in hop_seconds:
            self._hop.observe(value)
        self._chunks.inc(requests)
        self._tokens.inc(tokens)
        self._batch.observe(requests)
        self._step.observe(seconds)
        self._queue.set(queued)
        self._preempted.inc(preempted)
        self.kv(usage)

    def kv(self, usage: KVUsage) -> None:
        self._active.set(usage.requests)
        for state, value in (("capacity", usage.capacity_tokens), ("used", usage.used_tokens)):
            self._kv.labels(node=self.node, state=state).set(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class FrontendMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("helix_requests", "finished requests by outcome", ["outcome"], registry=self.registry)
        self.tokens = Counter("helix_generated_tokens", "tokens generated (rate = tokens/s)", registry=self.registry)
        self.prompt_tokens = Counter("helix_prompt_tokens", "prompt tokens prefilled", registry=self.registry)
        self.in_flight = Gauge("helix_requests_in_flight", "requests being generated", registry=self.registry)
        self.queued = Gauge("helix_requests_queued", "requests waiting for KV cache or a pipeline", registry=self.registry)
        self.first_token = Histogram("helix_time_to_first_token_seconds", "admission to first token",
                                     buckets=_LATENCY, registry=self.registry)
        self.step = Histogram("helix_pipeline_step_seconds", "round trip of one decode step through a pipeline",
                              ["pipeline"], buckets=_LATENCY, registry=self.registry)
        self.failovers = Counter("helix_failovers", "requests re-prefilled on another pipeline", registry=self.registry)
        self.pipeline_up = Gauge("helix_pipeline_up", "1 when every stage of the pipeline is reachable", ["pipeline"],
                                 registry=self.registry)
        self.kv_held = Gauge("helix_kv_held_tokens", "KV tokens (whole blocks) this front end's requests hold per "
                             "stage", ["node"], registry=self.registry)
        self.preemptions = Counter("helix_preemptions", "requests a stage preempted for KV blocks, re-prefilled later",
                                   registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
