"""What a local fleet's stages and front end report, read from their Prometheus /metrics.

Each stage's step histogram (one step on the compute thread, an emulated type's sleep included),
its step-overhead histogram, its batch and its decode hop histogram; the front end's
pipeline-step histogram (the decode round trip through each pipeline) and its finished requests'
latency and token counts; and its observed-capacity document (the stages' recent steps one by
one). These are what `helix_planner.sim.calibration` fits the simulator to. A worker on an
emulated network is read inside its namespace, where it listens.
"""

import http.client
import json
import socket
import time
import urllib.request
from collections.abc import Callable
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from helix_planner.observed import PATH, parse_observed
from helix_planner.sim.calibration import RequestTotals, ServedMetrics, StageMetrics
from helix_worker.errors import ServingError
from helix_worker.fleet.launcher import LOOPBACK, LocalFleet
from helix_worker.fleet.netem import EmulatedNetwork
from helix_worker.fleet.netns import entered

TIMEOUT = 10.0
POLL_TIMEOUT = 5.0  # the replanner's poll of the observed-capacity document


def _samples(text: str, label: str = "") -> dict[str, float]:
    """Sample name (and the value of `label`, if given, after a space) -> value, summed over other labels."""
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = f"{sample.name} {sample.labels.get(label, '')}" if label else sample.name
            out[key] = out.get(key, 0.0) + sample.value
    return out


def _get(port: int, path: str, netns: str | None) -> str:
    """GET http://127.0.0.1:`port``path` as namespace `netns` (None: this one) sees it."""
    with entered(netns):
        sock = socket.create_connection((LOOPBACK, port), timeout=TIMEOUT)
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=TIMEOUT)
    connection.sock = sock
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        body = response.read().decode()
    finally:
        connection.close()
    if response.status != 200:
        raise ServingError(f"GET {path} on port {port}{f' in {netns}' if netns else ''}: HTTP {response.status}")
    return body


def stage_metrics(text: str) -> StageMetrics:
    s, hops = _samples(text), _samples(text, "phase")
    return StageMetrics(s.get("helix_stage_step_seconds_count", 0.0), s.get("helix_stage_step_seconds_sum", 0.0),
                        s.get("helix_stage_batch_requests_sum", 0.0),
                        hops.get("helix_stage_hop_seconds_count decode", 0.0),
                        hops.get("helix_stage_hop_seconds_sum decode", 0.0),
                        s.get("helix_stage_step_overhead_seconds_sum", 0.0))


def _fetch(url: str, timeout: float = TIMEOUT) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return str(response.read().decode())


def fetch_observed(http_url: str, timeout: float = POLL_TIMEOUT) -> Any:
    """The observed-capacity document of the front end at `http_url`."""
    return json.loads(_fetch(http_url + PATH, timeout))


def scrape(fleet: LocalFleet, net: EmulatedNetwork | None, frontend_url: str,
           clock: Callable[[], float] = time.monotonic) -> ServedMetrics:
    """Every worker's metrics (on `net`, read in its namespace) and the front end's at `frontend_url`."""
    stages = {child.name: stage_metrics(_get(child.ports["http"], "/metrics",
                                             net.hosts[child.name].netns if net is not None else None))
              for child in fleet.children if child.worker}
    text = _fetch(frontend_url + "/metrics")
    front, pipelines = _samples(text), _samples(text, "pipeline")
    capacity = parse_observed(fetch_observed(frontend_url, TIMEOUT))
    names = {key.split(" ", 1)[1] for key in pipelines if key.startswith("helix_pipeline_step_seconds_count ")}
    totals = RequestTotals(front.get("vllm:e2e_request_latency_seconds_count", 0.0),
                           front.get("vllm:e2e_request_latency_seconds_sum", 0.0),
                           front.get("vllm:request_prompt_tokens_sum", 0.0),
                           front.get("vllm:request_generation_tokens_sum", 0.0))
    return ServedMetrics(clock(), stages, {tuple(p.split("->")): (pipelines[f"helix_pipeline_step_seconds_count {p}"],
                                                                  pipelines[f"helix_pipeline_step_seconds_sum {p}"])
                                           for p in names}, totals, capacity)
