"""status.observedTokensPerSecond: the operator reads the front end's token counter on a timer.

The operator runs against kmock; the front-end pod's address resolves to a real HTTP server on
127.0.0.1 that serves the worker's own Prometheus metrics with a counter growing at a known rate.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from fakecluster import ApiServer, Harness, running_operator
from opkit import GFD_PRODUCT, POOL_LABEL, REGION, fleet_spec, frontend_pod, helixcluster, local_http, node

from helix_operator.control.observe import Sample, counter_value, frontend_ready, pod_ip_address, rate
from helix_operator.control.runtime import RunOptions
from helix_worker.metrics import FrontendMetrics

NS = "observe"
HXC = "helix.dev/v1alpha1/helixclusters"
INTERVAL = 0.2

pytestmark = pytest.mark.timeout(60)


class FakeFrontend:
    """/metrics of a front end generating `rate` tokens/s (the real FrontendMetrics text); `fail` answers 503."""

    def __init__(self) -> None:
        self.metrics = FrontendMetrics("llama")
        self.rate, self.fail, self.address = 40.0, False, ""
        self.tokens, self.counted, self.since = 0.0, 0, time.monotonic()

    def advance(self) -> None:
        """Generate the tokens due since the last call, at the current rate."""
        now = time.monotonic()
        self.tokens += self.rate * (now - self.since)
        self.since = now
        self.metrics.generation_tokens.inc(int(self.tokens) - self.counted)
        self.counted = int(self.tokens)

    async def handle(self, _: web.Request) -> web.Response:
        if self.fail:
            return web.Response(status=503)
        self.advance()
        return web.Response(body=self.metrics.render(), content_type="text/plain")


@pytest.fixture
async def frontend() -> AsyncIterator[FakeFrontend]:
    fake = FakeFrontend()
    async with local_http("/metrics", fake.handle) as fake.address:
        yield fake


@pytest.fixture
async def operator(api: ApiServer, frontend: FakeFrontend) -> AsyncIterator[Harness]:
    def address(pod: dict[str, Any], port: int) -> str | None:
        assert port == 8000, "the spec's front-end HTTP port"
        return frontend.address if pod["metadata"]["name"] == "llama-frontend-0" else None

    options = RunOptions(resync_seconds=30, observe_seconds=INTERVAL, frontend_address=address)
    async with running_operator(api, options) as harness:
        yield harness


async def test_observed_tokens_per_second_follows_the_front_end(operator: Harness, frontend: FakeFrontend) -> None:
    for i in range(2):
        await operator.request("post", "/api/v1/nodes",
                               node(f"t4-{i}", {GFD_PRODUCT: "Tesla-T4", REGION: "onprem", POOL_LABEL: "obs"}))
    spec = fleet_spec(timeLimitSeconds=2)
    spec.update(model={"name": "llama3-8b"},
                nodePools=[{"name": "t4", "selector": {"matchLabels": {POOL_LABEL: "obs"}}}])
    await operator.request("post", f"/apis/helix.dev/v1alpha1/namespaces/{NS}/helixclusters",
                           helixcluster("llama", NS, spec))

    def status() -> dict[str, Any]:
        return (operator.get(HXC, NS, "llama") or {}).get("status") or {}

    await operator.eventually(lambda: status().get("phase") == "Running", explain=status)
    await operator.request("post", f"/api/v1/namespaces/{NS}/pods", frontend_pod(NS))
    observed = await operator.eventually(lambda: status().get("observedTokensPerSecond"), explain=status)
    assert 25 <= observed <= 55, observed
    assert status()["observedAt"].endswith("Z")

    # Unreachable: one Warning event, no crash, the last figure stays.
    frontend.fail = True
    unreachable = ("Warning", "FrontendMetricsUnreachable")
    await operator.eventually(lambda: unreachable in operator.events(NS, "llama"))
    kept = status()["observedTokensPerSecond"], status()["observedAt"]
    await asyncio.sleep(10 * INTERVAL)
    assert operator.events(NS, "llama").count(unreachable) == 1
    assert (status()["observedTokensPerSecond"], status()["observedAt"]) == kept

    # Answering again with no traffic: the figure follows.
    frontend.advance()
    frontend.rate, frontend.fail = 0.0, False
    await operator.eventually(lambda: status().get("observedTokensPerSecond") == 0.0, explain=status)


def test_rates_from_counter_samples() -> None:
    metrics = FrontendMetrics("llama")
    metrics.generation_tokens.inc(120)
    assert counter_value(metrics.render().decode()) == 120.0
    assert counter_value("# TYPE other counter\nother_total 3\n") is None
    assert rate(Sample(100, 10.0), Sample(160, 12.0), max_age=5) == 30.0
    assert rate(None, Sample(160, 12.0), max_age=5) is None, "a first sample is a baseline"
    assert rate(Sample(100, 10.0), Sample(20, 12.0), max_age=5) is None, "a counter reset: the pod restarted"
    assert rate(Sample(100, 1.0), Sample(160, 12.0), max_age=5) is None, "too old: the timer was stopped"


def test_pod_addresses_and_the_timer_filter() -> None:
    assert pod_ip_address({"status": {"podIP": "10.1.2.3"}}, 8000) == "10.1.2.3:8000"
    assert pod_ip_address({"status": {"podIP": "fd00::7"}}, 8000) == "[fd00::7]:8000"
    assert pod_ip_address({"status": {}}, 8000) is None
    ready = {"conditions": [{"type": "FrontendReady", "status": "True"}]}
    assert frontend_ready(ready) and not frontend_ready({"conditions": [{"type": "FrontendReady", "status": "False"}]})
