"""One request's timeline, recorded as vLLM records it (vllm/v1/metrics/stats.py).

Arrival, first admission onto a pipeline ("scheduled"), first and last token: TTFT is
arrival to first token, inter-token latency the gap between consecutive tokens (a failover's
re-prefill shows up there, as a preemption does in vLLM), queue time arrival to first
admission, and the per-request histograms are observed once, when the request finishes.
"""

import time
from dataclasses import dataclass, field

from helix_worker.metrics import FrontendMetrics


@dataclass
class RequestTimeline:
    metrics: FrontendMetrics
    prompt_tokens: int
    max_tokens: int
    arrived: float = field(default_factory=time.perf_counter)
    scheduled: float | None = None
    first_token: float | None = None
    last_token: float = 0.0
    tokens: int = 0
    done: bool = False

    def admitted(self) -> None:
        """The request got a pipeline; only the first admission ends its queue time."""
        if self.scheduled is None:
            self.scheduled = time.perf_counter()

    def token(self) -> None:
        now = time.perf_counter()
        m = self.metrics
        if self.first_token is None:
            self.first_token = now
            m.time_to_first_token.observe(now - self.arrived)
            m.prompt_tokens.inc(self.prompt_tokens)
        else:
            m.inter_token.observe(now - self.last_token)
        self.last_token = now
        self.tokens += 1
        m.generation_tokens.inc()

    def finished(self, reason: str) -> None:
        """The last token is out (`reason`: stop or length): a success, with its whole timeline (once)."""
        if self.done:
            return
        self.done = True
        m, scheduled, first = self.metrics, self.scheduled or self.arrived, self.first_token or self.last_token
        m.succeeded(reason)
        m.e2e.observe(time.perf_counter() - self.arrived)
        m.queue_time.observe(scheduled - self.arrived)
        m.prefill_time.observe(first - scheduled)
        m.decode_time.observe(self.last_token - first)
        m.inference_time.observe(self.last_token - scheduled)
        m.time_per_output_token.observe((self.last_token - first) / (self.tokens - 1) if self.tokens > 1 else 0.0)
        m.request_prompt_tokens.observe(self.prompt_tokens)
        m.request_generation_tokens.observe(self.tokens)
        m.max_generation_tokens.observe(self.tokens)
        m.max_tokens_param.observe(self.max_tokens)

    def failed(self, reason: str) -> None:
        """It ended without finishing (ignored once it has finished: a client may leave after the last token)."""
        if not self.done:
            self.done = True
            self.metrics.failed(reason)
