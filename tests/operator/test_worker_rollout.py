"""A worker-spec change (new image, same plan) rolls through the pods in batches, against kmock.

The fake kubelet marks pods ready only when the test says so, so every step of the operator
can be looked at: at most `maxSurgeNodes` nodes are in transition at once, and some pipeline
of the plan is whole (every stage ready) at every moment.
"""

import asyncio
import json
from typing import Any

import pytest
from opkit import GFD_PRODUCT, POOL_LABEL, REGION, fleet_spec, helixcluster, node

NS = "rollout"
HXC = "helix.dev/v1alpha1/helixclusters"
BASE = f"/apis/helix.dev/v1alpha1/namespaces/{NS}/helixclusters"
MAX_SURGE = 2

pytestmark = pytest.mark.timeout(90)


def _spec() -> dict[str, Any]:
    """Llama-3-8B over six T4s: too big for one T4, so the plan has several multi-node pipelines."""
    spec = fleet_spec(timeLimitSeconds=2)
    spec["model"] = {"name": "llama3-8b"}
    spec["nodePools"] = [{"name": "t4", "selector": {"matchLabels": {POOL_LABEL: "roll"}}}]
    spec["rollout"] = {"maxSurgeNodes": MAX_SURGE, "drainTimeoutSeconds": 5}
    return spec


def _pods(operator) -> list[dict[str, Any]]:
    return [p for p in operator.live("v1/pods", NS) if not p["metadata"].get("deletionTimestamp")]


def _ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


async def test_worker_image_change_rolls_through_in_batches(operator) -> None:
    for i in range(6):
        await operator.request("post", "/api/v1/nodes",
                               node(f"t4-{i}", {GFD_PRODUCT: "Tesla-T4", REGION: "onprem", POOL_LABEL: "roll"}))
    await operator.request("post", BASE, helixcluster("llama", NS, _spec()))

    def status() -> dict[str, Any]:
        return (operator.get(HXC, NS, "llama") or {}).get("status") or {}

    def settled() -> bool:
        rollout = status().get("rollout") or {}
        return status().get("phase") == "Running" and rollout.get("state") == "Complete"

    await operator.eventually(settled, explain=status)
    plan = json.loads(operator.get("v1/configmaps", NS, status()["activePlan"]["configMap"])["data"]["plan.json"])
    pipelines = [[s["node"] for s in p["stages"]] for p in plan["pipelines"]]
    nodes = {n["name"] for n in plan["nodes"]}
    assert len(pipelines) >= 2 and max(map(len, pipelines)) >= 2, pipelines

    await operator.request("patch", f"{BASE}/llama", {"spec": {"worker": {"image": "helix/worker:v2"}}})
    batches: list[set[str]] = []
    seen: set[str] = set()
    states: set[str] = set()
    for _ in range(200):
        await asyncio.sleep(0.3)  # let the operator take its next step on what the kubelet last reported
        pods = _pods(operator)
        image = {p["metadata"]["annotations"]["helix.dev/node"]: (p["spec"]["containers"][0]["image"], _ready(p))
                 for p in pods}
        serving = {n for n, (_, ready) in image.items() if ready}
        assert len(nodes - serving) <= MAX_SURGE, f"too many nodes in transition: {sorted(nodes - serving)}"
        assert any(set(p) <= serving for p in pipelines), f"no whole pipeline; serving {sorted(serving)}"
        new = {n for n, (img, _) in image.items() if img == "helix/worker:v2"} - seen
        if new:
            batches.append(new)
            seen |= new
        states.add((status().get("rollout") or {}).get("state"))
        if seen == nodes and settled() and all(ready for _, ready in image.values()):
            break
        await operator.kubelet.sync()
    else:
        raise AssertionError(f"the rollout did not finish: batches {batches}, status {status().get('rollout')}")
    assert all(len(b) <= MAX_SURGE for b in batches) and len(batches) >= -(-len(nodes) // MAX_SURGE), batches
    assert "Replacing" in states
    assert status()["activePlan"]["hash"] == plan["planHash"], "no replan: the same plan, new pods"
