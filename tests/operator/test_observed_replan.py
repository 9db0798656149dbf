"""Observed capacity in the operator: it polls the front end's `GET /v2/helix/observed`, keeps the
effective profiles in status, and replans with them on sustained drift, once, saying why.

The operator runs against kmock; the front-end pod's address resolves to a real HTTP server on
127.0.0.1 serving an observed-capacity document (the front end's own format) in which node
t4-0's steps take a chosen multiple of what the catalog's T4 profile says.
"""

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from fakecluster import ApiServer, Harness, running_operator
from opkit import GFD_PRODUCT, POOL_LABEL, REGION, fleet_spec, frontend_pod, helixcluster, local_http, node

from helix_operator.control.runtime import RunOptions
from helix_planner.models import get_model
from helix_planner.observed import PATH, NodeObservation, Observed, StepSample
from helix_planner.profiles import load_catalog
from helix_planner.throughput.profiled import layer_curves

NS = "capacity"
HXC = "helix.dev/v1alpha1/helixclusters"
INTERVAL, DEBOUNCE = 0.2, 1.5
CATALOG, MODEL = load_catalog(), get_model("llama3-8b")

pytestmark = pytest.mark.timeout(60)


class FakeFrontend:
    """Serves the document for the active plan; `slowdown(now)` says how slow t4-0 is at each read."""

    def __init__(self) -> None:
        self.plan_hash = ""
        self.slowdown = lambda now: 1.0
        self.address = ""

    def document(self) -> dict[str, Any]:
        _, decode = layer_curves(CATALOG, MODEL, CATALOG.gpu("T4"))
        slow = {"t4-0": self.slowdown(time.monotonic())}
        nodes = {name: NodeObservation("T4", (0, 16), tuple(StepSample(b, 16, 16 * decode(b) * slow.get(name, 1.0))
                                                             for b in range(1, 9)))
                 for name in ("t4-0", "t4-1")}
        return Observed(self.plan_hash, nodes).to_document()

    async def handle(self, _: web.Request) -> web.Response:
        return web.json_response(self.document())


@pytest.fixture
async def frontend() -> AsyncIterator[FakeFrontend]:
    fake = FakeFrontend()
    async with local_http(PATH, fake.handle) as fake.address:
        yield fake


@pytest.fixture
async def operator(api: ApiServer, frontend: FakeFrontend) -> AsyncIterator[Harness]:
    def address(pod: dict[str, Any], port: int) -> str | None:
        return frontend.address if pod["metadata"]["name"] == "llama-frontend-0" else None

    async with running_operator(api, RunOptions(resync_seconds=30, observe_seconds=INTERVAL,
                                                frontend_address=address)) as harness:
        yield harness


async def test_sustained_drift_replans_once_and_says_why(operator: Harness, frontend: FakeFrontend) -> None:
    for i in range(2):
        await operator.request("post", "/api/v1/nodes",
                               node(f"t4-{i}", {GFD_PRODUCT: "Tesla-T4", REGION: "onprem", POOL_LABEL: "cap"}))
    spec = fleet_spec(timeLimitSeconds=2, observedCapacity={"enabled": True, "driftThreshold": 0.3,
                                                            "debounceSeconds": DEBOUNCE, "minGainPercent": 5})
    spec.update(model={"name": MODEL.name},
                nodePools=[{"name": "t4", "selector": {"matchLabels": {POOL_LABEL: "cap"}}}])
    await operator.request("post", f"/apis/helix.dev/v1alpha1/namespaces/{NS}/helixclusters",
                           helixcluster("llama", NS, spec))

    def status() -> dict[str, Any]:
        return (operator.get(HXC, NS, "llama") or {}).get("status") or {}

    def drift_condition() -> dict[str, Any]:
        return next((c for c in status().get("conditions") or [] if c["type"] == "CapacityDrift"), {})

    def drift_replans() -> list[str]:
        return [e["message"] for e in operator.live("v1/events", NS)
                if e["reason"].startswith("Plan") and "(CapacityDrift)" in e["message"]]

    await operator.eventually(lambda: status().get("phase") == "Running", explain=status)
    first = status()["activePlan"]
    frontend.plan_hash = first["hash"]
    await operator.request("post", f"/api/v1/namespaces/{NS}/pods", frontend_pod(NS))

    # Within the threshold: effective profiles in status, no drift, no replan.
    frontend.slowdown = lambda now: 1.2
    await operator.eventually(lambda: drift_condition().get("reason") == "AsProfiled", explain=status)
    assert status()["observedCapacity"]["nodes"]["t4-0"]["slowdown"] == pytest.approx(1.2)
    assert status()["observedCapacity"]["planHash"] == first["hash"]

    # Flapping (slow half of each second, well under the debounce): drifting, never sustained.
    frontend.slowdown = lambda now: 3.0 if now % 1.0 < 0.5 else 1.0
    await operator.eventually(lambda: drift_condition().get("reason") == "Drifting", explain=status)
    await asyncio.sleep(2 * DEBOUNCE)
    assert drift_replans() == [] and status()["lastReplan"]["trigger"] == "Created"

    # Sustained: one replan with the effective profiles, the reason in status and in an event.
    frontend.slowdown = lambda now: 3.0
    record = await operator.eventually(lambda: status()["lastReplan"]["trigger"] == "CapacityDrift"
                                       and status()["lastReplan"], explain=status)
    assert "t4-0 decodes 3.00x slower than its T4 profile for " in record["message"], record
    assert record["outcome"] == "Applied", record
    assert record["toTokensPerSecond"] > record["fromTokensPerSecond"] * 1.05
    layers = await operator.eventually(lambda: status()["activePlan"]["hash"] != first["hash"] and status())
    frontend.plan_hash = layers["activePlan"]["hash"]
    assert len(drift_replans()) == 1 and "t4-0 decodes 3.00x slower" in drift_replans()[0]
    assert any(e["type"] == "Warning" and e["message"].startswith("CapacityDrift=True: t4-0 decodes 3.00x slower")
               for e in operator.live("v1/events", NS))
    # The drift acted on is the new baseline: the same slowdown does not replan again.
    await asyncio.sleep(2 * DEBOUNCE)
    assert len(drift_replans()) == 1
    assert drift_condition()["status"] == "True" and drift_condition()["reason"] == "PlanApplied"
