"""Prometheus metrics of a stage and of the front end, each in its own registry (no globals).

Where vLLM has a metric for the same thing, the front end exports it under vLLM's name, label
(`model_name`) and meaning, so dashboards and autoscalers built for vLLM read Helix unchanged;
what vLLM has no word for (pipelines, failover, stages) keeps a `helix_` name, with the
`model_name` label too. Latency buckets reach minutes: a pipeline across regions queues and
prefills for tens of seconds under load.
"""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from helix_worker.engine.kv_pool import KVUsage
from helix_worker.protocol import Phase

CONTENT_TYPE = CONTENT_TYPE_LATEST
MODEL = "model_name"
# vLLM's bucket families (vllm/v1/metrics/buckets.py), so quantiles compare across the two.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
INTER_TOKEN_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                       20.0, 40.0, 80.0)
REQUEST_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
                   480.0, 960.0, 1920.0, 7680.0)
TOKEN_COUNT_BUCKETS = tuple(m * 10 ** e for e in range(7) for m in (1, 2, 5))  # vLLM's 1-2-5 series, to 5M
# Helix's own: one step or hop, from sub-millisecond on a local CPU stage to a stalled WAN link.
STEP_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0,
                80.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class StageMetrics:
    """One stage: its steps, hops, queue and KV pool (vLLM's `kv_cache_usage_perc`, per node)."""

    def __init__(self, node: str, model_name: str) -> None:
        self.registry = r = CollectorRegistry()
        names, values = [MODEL, "node"], (model_name, node)
        self._chunks = Counter("helix_stage_chunks", "request chunks processed", names, registry=r).labels(*values)
        self._tokens = Counter("helix_stage_tokens", "token rows processed (rate = tokens/s)", names,
                               registry=r).labels(*values)
        self._batch = Histogram("helix_stage_batch_requests", "requests per step", names, buckets=BATCH_BUCKETS,
                                registry=r).labels(*values)
        self._step = Histogram("helix_stage_step_seconds", "time of one step on the compute thread, hand-off included",
                               names, buckets=STEP_BUCKETS, registry=r).labels(*values)
        self._overhead = Histogram("helix_stage_step_overhead_seconds", "a step's time on the stage beyond its "
                                   "layers' compute: forming it, handing it to the compute thread and back, sending "
                                   "its outputs", names, buckets=STEP_BUCKETS, registry=r).labels(*values)
        hop = Histogram("helix_stage_hop_seconds", "time a chunk spends on this stage, queue included, by phase "
                        "(prefill: a prompt's chunk; decode: one token's)", [*names, "phase"],
                        buckets=STEP_BUCKETS, registry=r)
        self._hop = {phase: hop.labels(*values, phase.name.lower()) for phase in Phase}  # bound once: per piece
        self._queue = Gauge("helix_stage_queue_length", "chunks waiting for a step", names, registry=r).labels(*values)
        self._kv = Gauge("helix_stage_kv_tokens", "KV cache tokens by state (used: whole blocks held)",
                         [*names, "state"], registry=r)
        self._usage = Gauge("vllm:kv_cache_usage_perc", "KV-cache usage of this stage. 1 means 100 percent usage.",
                            names, registry=r).labels(*values)
        self._active = Gauge("helix_stage_active_requests", "requests holding KV cache", names,
                             registry=r).labels(*values)
        self._preempted = Counter("helix_stage_preemptions", "requests preempted when KV blocks ran out "
                                  "(their front end re-prefills them)", names, registry=r).labels(*values)
        self._values = values

    def step(self, requests: int, tokens: int, seconds: float, queued: int, usage: KVUsage,
             hop_seconds: list[tuple[Phase, float]], preempted: int, overhead: float) -> None:
        for phase, value in hop_seconds:
            self._hop[phase].observe(value)
        self._overhead.observe(overhead)
        self._chunks.inc(requests)
        self._tokens.inc(tokens)
        self._batch.observe(requests)
        self._step.observe(seconds)
        self._queue.set(queued)
        self._preempted.inc(preempted)
        self.kv(usage)

    def kv(self, usage: KVUsage) -> None:
        self._active.set(usage.requests)
        self._usage.set(usage.used_tokens / usage.capacity_tokens if usage.capacity_tokens else 0.0)
        for state, value in (("capacity", usage.capacity_tokens), ("used", usage.used_tokens)):
            self._kv.labels(*self._values, state).set(value)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class FrontendMetrics:
    """The front end's requests (vLLM's names; `frontend.request_timeline` times each) and pipelines."""

    def __init__(self, model_name: str) -> None:
        self.registry = r = CollectorRegistry()
        m = [MODEL]

        def histogram(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(name, doc, m, buckets=buckets, registry=r).labels(model_name)

        self.running = Gauge("vllm:num_requests_running", "requests holding a pipeline (and its KV room)", m,
                             registry=r).labels(model_name)
        self.waiting = Gauge("vllm:num_requests_waiting", "requests waiting for KV room or a pipeline", m,
                             registry=r).labels(model_name)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "prompt tokens of requests that got their first token", m,
                                     registry=r).labels(model_name)
        self.generation_tokens = Counter("vllm:generation_tokens", "tokens generated (rate = tokens/s)", m,
                                         registry=r).labels(model_name)
        self.preemptions = Counter("vllm:num_preemptions", "times a stage preempted a request for KV blocks "
                                   "(it is re-prefilled later)", m, registry=r).labels(model_name)
        self._success = Counter("vllm:request_success", "requests that finished: stop (a stop token) or length",
                                [*m, "finished_reason"], registry=r)
        self.time_to_first_token = histogram("vllm:time_to_first_token_seconds", "arrival to first token",
                                             TTFT_BUCKETS)
        self.inter_token = histogram("vllm:inter_token_latency_seconds", "time between two tokens of a request",
                                     INTER_TOKEN_BUCKETS)
        self.time_per_output_token = histogram("vllm:request_time_per_output_token_seconds",
                                               "a request's decode time over its tokens after the first",
                                               INTER_TOKEN_BUCKETS)
        self.e2e = histogram("vllm:e2e_request_latency_seconds", "arrival to last token", REQUEST_BUCKETS)
        self.queue_time = histogram("vllm:request_queue_time_seconds", "arrival to first admission onto a pipeline",
                                    REQUEST_BUCKETS)
        self.prefill_time = histogram("vllm:request_prefill_time_seconds", "first admission to first token",
                                      REQUEST_BUCKETS)
        self.decode_time = histogram("vllm:request_decode_time_seconds", "first token to last token", REQUEST_BUCKETS)
        self.inference_time = histogram("vllm:request_inference_time_seconds", "first admission to last token",
                                        REQUEST_BUCKETS)
        self.request_prompt_tokens = histogram("vllm:request_prompt_tokens", "prompt tokens per finished request",
                                               TOKEN_COUNT_BUCKETS)
        self.request_generation_tokens = histogram("vllm:request_generation_tokens",
                                                   "generated tokens per finished request", TOKEN_COUNT_BUCKETS)
        self.max_generation_tokens = histogram("vllm:request_max_num_generation_tokens",
                                               "generated tokens per finished request (n is always 1)",
                                               TOKEN_COUNT_BUCKETS)
        self.max_tokens_param = histogram("vllm:request_params_max_tokens", "max_tokens of finished requests",
                                          TOKEN_COUNT_BUCKETS)
        self._failures = Counter("helix_request_failures", "requests that did not finish, by reason: abort (the "
                                 "client left) or the error's type", [*m, "reason"], registry=r)
        self.failovers = Counter("helix_failovers", "requests re-prefilled on another pipeline", m,
                                 registry=r).labels(model_name)
        self._step = Histogram("helix_pipeline_step_seconds", "round trip of one decode step through a pipeline",
                               [*m, "pipeline"], buckets=STEP_BUCKETS, registry=r)
        self._pipeline_up = Gauge("helix_pipeline_up", "1 when every stage of the pipeline is reachable",
                                  [*m, "pipeline"], registry=r)
        self._kv_held = Gauge("helix_kv_held_tokens", "KV tokens (whole blocks) this front end's requests hold per "
                              "stage", [*m, "node"], registry=r)
        self._observed_step = Gauge("helix_observed_step_seconds_per_layer", "median seconds per layer of a stage's "
                                    "recent steps, by phase (decode: decode rows only; prefill: with prompt tokens)",
                                    [*m, "node", "phase"], registry=r)
        self._observed_link = Gauge("helix_observed_link_bytes_per_second", "what activation frames from one stage "
                                    "to the next move per second on the wire (recent median)",
                                    [*m, "from", "to"], registry=r)
        self.model_name = model_name

    def observed_step(self, node: str, phase: str, seconds_per_layer: float | None) -> None:
        """A stage's recent step time; None (no recent steps) drops the series."""
        _set_or_drop(self._observed_step, (self.model_name, node, phase), seconds_per_layer)

    def observed_link(self, src: str, dst: str, bytes_per_second: float | None) -> None:
        _set_or_drop(self._observed_link, (self.model_name, src, dst), bytes_per_second)

    def succeeded(self, reason: str) -> None:
        self._success.labels(self.model_name, reason).inc()

    def failed(self, reason: str) -> None:
        self._failures.labels(self.model_name, reason).inc()

    def pipeline_step(self, pipeline: str, seconds: float) -> None:
        self._step.labels(self.model_name, pipeline).observe(seconds)

    def pipeline_up(self, pipeline: str, up: bool) -> None:
        self._pipeline_up.labels(self.model_name, pipeline).set(1 if up else 0)

    def kv_held(self, node: str, tokens: int) -> None:
        self._kv_held.labels(self.model_name, node).set(tokens)

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _set_or_drop(gauge: Gauge, labels: tuple[str, ...], value: float | None) -> None:
    """Set a labelled gauge, or remove its series when there is no value (rather than a stale one)."""
    if value is not None:
        gauge.labels(*labels).set(value)
        return
    try:
        gauge.remove(*labels)
    except KeyError:
        pass
