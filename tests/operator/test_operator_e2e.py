"""kopf + the operator against kmock's API emulator, in the test's event loop (no cluster).

The emulator has no controllers: `fakecluster.ApiServer` adds the garbage collector (owner
references) and `Kubelet` marks pods and Deployments ready.
"""

import asyncio
import json
from typing import Any

import pytest
from opkit import GFD_PRODUCT, GKE_ACCELERATOR, POOL_LABEL, REGION, fleet, fleet_spec, node, pruned_fields

from helix_operator.api.crd import helixcluster_status_schema

NS = "inference"
HXC = "helix.dev/v1alpha1/helixclusters"
BASE = f"/apis/helix.dev/v1alpha1/namespaces/{NS}/helixclusters"

pytestmark = pytest.mark.timeout(90)


def helixcluster(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "helix.dev/v1alpha1", "kind": "HelixCluster",
            "metadata": {"name": name, "namespace": NS}, "spec": spec}


async def add_nodes(operator, nodes) -> None:
    for body in nodes:
        await operator.request("post", "/api/v1/nodes", body)


def replans(operator) -> int:
    """Planner runs so far, from the operator's own metric."""
    return int(sum(sample.value for metric in operator.context.metrics.replans.collect()
                   for sample in metric.samples if sample.name.endswith("_total")))


def status_of(operator, name: str = "llama") -> dict[str, Any]:
    return (operator.get(HXC, NS, name) or {}).get("status") or {}


def condition(status: dict[str, Any], kind: str) -> tuple[str, str] | None:
    for cond in status.get("conditions") or []:
        if cond["type"] == kind:
            return cond["status"], cond["reason"]
    return None


async def test_fleet_plan_rollout_replan_and_deletion(operator) -> None:
    await add_nodes(operator, fleet())
    await operator.request("post", BASE, helixcluster("llama", fleet_spec()))

    def running():
        status = (operator.get(HXC, NS, "llama") or {}).get("status") or {}
        return status if status.get("phase") == "Running" else None

    status = await operator.eventually(running)
    active = status["activePlan"]
    assert active["tokensPerSecond"] > 0 and active["pipelines"] >= 1 and status["observedGeneration"] == 1
    assert condition(status, "Ready") == ("True", "Serving")
    assert status["nodes"]["discovered"] == 24 and status["nodes"]["byRegion"]["onprem-ams"] == 8
    assert pruned_fields(helixcluster_status_schema(), status) == [], "status fields the CRD schema would drop"

    configmap = operator.get("v1/configmaps", NS, active["configMap"])
    plan = json.loads(configmap["data"]["plan.json"])
    assert plan["planHash"] == active["hash"]
    layout = {n["name"]: (n["start"], n["end"]) for n in plan["nodes"]}
    pods = operator.live("v1/pods", NS)
    assert len(pods) == len(layout) == status["nodes"]["used"]
    for pod in pods:
        env = {e["name"]: e["value"] for e in pod["spec"]["containers"][0]["env"]}
        node = env["HELIX_NODE"]
        assert (int(env["HELIX_LAYER_START"]), int(env["HELIX_LAYER_END"])) == layout[node]
        assert env["HELIX_PLAN_HASH"] == active["hash"]
        affinity = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        assert affinity["nodeSelectorTerms"][0]["matchFields"][0]["values"] == [node]
    deployment = operator.get("apps/v1/deployments", NS, "llama-frontend")
    assert deployment["spec"]["template"]["spec"]["volumes"][0]["configMap"]["name"] == active["configMap"]
    assert operator.get("v1/services", NS, "llama")["spec"]["ports"][0]["port"] == 8000
    assert status["url"] == "http://llama.inference.svc:8000", "the Service's address, in status and kubectl get"
    policies = operator.live("networking.k8s.io/v1/networkpolicies", NS)
    assert {p["metadata"]["name"] for p in policies} == {"llama-worker", "llama-frontend"}
    expected = {("Normal", "PlanApplied"), ("Normal", "Serving")}
    await operator.eventually(lambda: expected <= set(operator.events(NS, "llama")))
    assert ("Normal", "RollingOut") in operator.events(NS, "llama")
    assert [e for e in operator.events(NS, "llama") if e[0] == "Warning"] == [], "a rollout is routine, not a warning"
    metrics = {s.name: s.value for m in operator.context.metrics.registry.collect() for s in m.samples
               if s.labels.get("name") == "llama" and s.labels.get("result", "ok") == "ok"}
    assert metrics["helix_operator_planned_tokens_per_second"] == active["tokensPerSecond"]
    assert metrics["helix_operator_plan_seconds_count"] == 1 and metrics["helix_operator_reconciles_total"] >= 2
    assert 0 <= metrics["helix_operator_plan_gap_ratio"] < 1

    # Relabel two used nodes into another region in quick succession: one replan after the debounce.
    before, moved = replans(operator), [n for n in layout if n.startswith("gke-l4")][:2]
    for name in moved:
        await operator.request("patch", f"/api/v1/nodes/{name}", {"metadata": {"labels": {REGION: "us-central1"}}})
    await operator.request("patch", f"/api/v1/nodes/{moved[0]}", {"metadata": {"annotations": {"heartbeat": "1"}}})
    await operator.eventually(lambda: status_of(operator)["lastReplan"]["trigger"] == "NodesChanged")
    await asyncio.sleep(1.0)  # a few debounce periods: no second replan
    assert replans(operator) == before + 1
    assert status_of(operator)["lastReplan"]["outcome"] in ("Applied", "Kept")
    assert status_of(operator)["nodes"]["byRegion"]["us-central1"] == 10

    def rolled_out(without: str = ""):
        status = status_of(operator)
        nodes = {p["metadata"]["annotations"]["helix.dev/node"] for p in operator.live("v1/pods", NS)}
        return (status.get("phase") == "Running" and status["rollout"]["state"] == "Complete"
                and status["rollout"]["targetHash"] == status["activePlan"]["hash"] and without not in nodes)

    await operator.eventually(rolled_out)

    # Remove a node the plan uses: the plan broke, so it is replaced whatever the gain.
    current = status_of(operator)["activePlan"]["configMap"]
    used = [n["name"] for n in json.loads(operator.get("v1/configmaps", NS, current)["data"]["plan.json"])["nodes"]]
    before = replans(operator)
    await operator.request("delete", f"/api/v1/nodes/{used[0]}")
    await operator.eventually(lambda: status_of(operator)["lastReplan"]["trigger"] == "PlanInfeasible")
    assert status_of(operator)["lastReplan"]["outcome"] == "Applied" and replans(operator) == before + 1
    assert pruned_fields(helixcluster_status_schema(), status_of(operator)) == []
    await operator.eventually(lambda: rolled_out(without=used[0]))
    plans = [c for c in operator.live("v1/configmaps", NS) if c["metadata"]["labels"]["app.kubernetes.io/component"]
             == "plan"]
    assert len(plans) == 1, "superseded plan ConfigMaps are collected"

    # A new worker image replaces the pods without replanning.
    before = replans(operator)
    await operator.request("patch", f"{BASE}/llama", {"spec": {"worker": {"image": "helix/worker:v2"}}})

    def upgraded():
        images = {p["spec"]["containers"][0]["image"] for p in operator.live("v1/pods", NS)}
        return images == {"helix/worker:v2"} and rolled_out() and status_of(operator)["observedGeneration"] == 2

    await operator.eventually(upgraded)
    assert replans(operator) == before

    # Suspend stops workers and scales the front end to zero; resuming brings them back.
    await operator.request("patch", f"{BASE}/llama", {"spec": {"suspend": True}})
    await operator.eventually(lambda: status_of(operator)["phase"] == "Suspended" and not operator.live("v1/pods", NS))
    assert operator.get("apps/v1/deployments", NS, "llama-frontend")["spec"]["replicas"] == 0
    await operator.request("patch", f"{BASE}/llama", {"spec": {"suspend": False}})
    await operator.eventually(rolled_out)

    # Deleting the HelixCluster removes every child (owner references; fakecluster plays the GC).
    await operator.request("delete", f"{BASE}/llama")

    def gone():
        kinds = ("v1/pods", "v1/configmaps", "v1/services", "apps/v1/deployments",
                 "networking.k8s.io/v1/networkpolicies", HXC)
        return not any(operator.live(kind, NS) for kind in kinds)

    await operator.eventually(gone)


def pool_spec(pool: str, model: str = "llama2-70b", **extra: Any) -> dict[str, Any]:
    spec = fleet_spec()
    spec["model"] = {"name": model}
    spec["nodePools"] = [{"name": "only", "selector": {"matchLabels": {POOL_LABEL: pool}}}]
    spec.update(extra)
    return spec


def t4(name: str, pool: str, region: str = "onprem-ams", product: str = "Tesla-T4") -> dict[str, Any]:
    return node(name, {GFD_PRODUCT: product, REGION: region, POOL_LABEL: pool})


async def test_dry_run_and_invalid_situations(operator) -> None:
    """Each situation gets its condition and a Warning event, retries only on change, and never crashes."""
    split = [node(f"split-l4-{r}-{i}", {GKE_ACCELERATOR: "nvidia-l4", REGION: f"r{r}", POOL_LABEL: "split"})
             for r in range(3) for i in range(5)]
    await add_nodes(operator, fleet() + split + [t4("small-0", "small"), t4("small-1", "small"),
                                                   t4("b200-0", "b200", product="NVIDIA-B200"),
                                                   t4("manual-0", "manual"), t4("manual-1", "manual")])
    dry_run = fleet_spec(mode="DryRun")
    dry_run["nodePools"][1]["selector"] = {"matchLabels": {POOL_LABEL: "onprem"}}  # not the B200 node
    invalid = pool_spec("small")
    invalid["nodePools"][0].update(gpuType="T4", gpuTypeLabel=GFD_PRODUCT)
    privileged = pool_spec("small")
    privileged["worker"]["template"] = {"spec": {"containers": [{"name": "worker",
                                                                 "securityContext": {"privileged": True}}]}}
    disconnected = pool_spec("split", network={"regionPairs": [
        {"from": "r0", "to": "r1", "disabled": True}, {"from": "r1", "to": "r2", "disabled": True},
        {"from": "r0", "to": "r2", "disabled": True}]})
    cases = {
        "dry-run": (dry_run, "Planned", "PlanProposed", "DryRun"),
        "no-nodes": (pool_spec("nothing-has-this"), "NodesDiscovered", "NoMatchingNodes", "Failed"),
        "too-big": (pool_spec("small"), "Planned", "InsufficientMemory", "Failed"),
        "unknown-gpu": (pool_spec("b200", model="llama3-8b"), "NodesDiscovered", "UnknownGPUType", "Failed"),
        "disconnected": (disconnected, "Planned", "Infeasible", "Failed"),
        "invalid": (invalid, "Validated", "InvalidSpec", "Failed"),
        "privileged": (privileged, "Validated", "InvalidSpec", "Failed"),
        "manual": (pool_spec("manual", model="llama3-8b", planner={"mode": "Manual", "timeLimitSeconds": 2}),
                   "Planned", "AwaitingApproval", "AwaitingApproval"),
    }
    for name, (spec, *_) in cases.items():
        await operator.request("post", BASE, helixcluster(name, spec))

    for name, (_, kind, reason, phase) in cases.items():
        def settled(name=name, kind=kind, reason=reason, phase=phase):
            status = status_of(operator, name)
            return status.get("phase") == phase and condition(status, kind)[1] == reason

        await operator.eventually(settled, timeout=45, explain=lambda name=name: status_of(operator, name))
        ready = condition(status_of(operator, name), "Ready")
        assert ready[0] == "False", (name, ready)
        if name not in ("dry-run", "manual"):
            await operator.eventually(lambda name=name, reason=reason: ("Warning", reason) in operator.events(NS, name))

    validated = next(c for c in status_of(operator, "privileged")["conditions"] if c["type"] == "Validated")
    assert validated["message"].startswith("spec.worker.template.spec.containers[0].securityContext.privileged: "
                                           "must not be true")
    proposed = status_of(operator, "dry-run")["proposedPlan"]
    assert proposed["tokensPerSecond"] > 0 and "activePlan" not in status_of(operator, "dry-run")
    assert operator.get("v1/configmaps", NS, proposed["configMap"])["metadata"]["annotations"]["helix.dev/proposed"]
    assert not operator.live("v1/pods", NS) and not operator.live("apps/v1/deployments", NS)

    # Manual: the proposal rolls out once its hash is approved in the spec.
    approved = status_of(operator, "manual")["proposedPlan"]["hash"]
    await operator.request("patch", f"{BASE}/manual", {"spec": {"planner": {"approvedPlanHash": approved}}})
    await operator.eventually(lambda: status_of(operator, "manual").get("phase") == "Running")
    assert status_of(operator, "manual")["activePlan"]["hash"] == approved
    assert status_of(operator, "manual")["lastReplan"]["trigger"] == "Approved"
    assert "spec.nodePools[0]" in condition_message(status_of(operator, "invalid"), "Validated")

    # Nothing changed, so nothing is retried: the failed plan ran once.
    runs = replans(operator)
    await asyncio.sleep(1.0)
    assert replans(operator) == runs

    # A GPUProfile for the unknown GPU is a change: discovery succeeds and planning resumes.
    await operator.request("post", "/apis/helix.dev/v1alpha1/gpuprofiles", {
        "apiVersion": "helix.dev/v1alpha1", "kind": "GPUProfile", "metadata": {"name": "b200"},
        "spec": {"gpuType": "B200", "vram": "192GB", "memoryBandwidth": "8e12", "peakFlops": 2.25e15,
                 "labels": ["NVIDIA-B200"]}})
    await operator.eventually(lambda: condition(status_of(operator, "unknown-gpu"), "NodesDiscovered")[0] == "True")
    await operator.eventually(lambda: status_of(operator, "unknown-gpu").get("phase") == "Running", timeout=45)


def condition_message(status: dict[str, Any], kind: str) -> str:
    return next(c["message"] for c in status["conditions"] if c["type"] == kind)
