"""Per-model inference statistics in Triton's shape (what ModelStatistics and `/stats` report).

perf_analyzer and genai-perf read these to split client-side latency into server parts. A
Helix request's time is spent in the pipelines, so each whole request counts as compute
(`compute_infer`) and nothing as queue or input/output conversion, which are not measured apart.
"""

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Duration:
    count: int = 0
    ns: int = 0

    def add(self, ns: int) -> None:
        self.count += 1
        self.ns += ns

    def as_json(self) -> dict[str, int]:
        return {"count": self.count, "ns": self.ns}


@dataclass
class InferenceStatistics:
    """Counters of one model: an execution is one infer call, an inference one prompt of it."""

    inference_count: int = 0
    execution_count: int = 0
    last_inference_ms: int = 0
    success: _Duration = field(default_factory=_Duration)
    fail: _Duration = field(default_factory=_Duration)
    batches: dict[int, _Duration] = field(default_factory=dict)

    def record(self, prompts: int, ns: int, ok: bool) -> None:
        self.last_inference_ms = int(time.time() * 1000)
        if not ok:
            self.fail.add(ns)
            return
        self.success.add(ns)
        self.inference_count += prompts
        self.execution_count += 1
        self.batches.setdefault(prompts, _Duration()).add(ns)

    def as_json(self, name: str, version: str) -> dict[str, Any]:
        """One `model_stats` entry as Triton's REST API writes it (the gRPC message has the same fields)."""
        zero = _Duration().as_json()
        return {"name": name, "version": version, "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count, "execution_count": self.execution_count,
                "inference_stats": {"success": self.success.as_json(), "fail": self.fail.as_json(), "queue": zero,
                                    "compute_input": zero, "compute_infer": self.success.as_json(),
                                    "compute_output": zero, "cache_hit": zero, "cache_miss": zero},
                "batch_stats": [{"batch_size": size, "compute_input": zero, "compute_infer": d.as_json(),
                                 "compute_output": zero} for size, d in sorted(self.batches.items())]}
