"""The planner, the data plane and the operator as one system, the way an SRE uses it.

No kube-apiserver or kubelet runs here: `helix_dev.LocalCluster` runs the operator against
kmock's API emulator and plays scheduler, Deployment controller, kube-proxy and kubelet, so
every Pod the operator creates runs as real local processes (`helix model init`, `helix
worker`, `helix frontend`) on 127.0.0.1, slowed down by the simulated GPU type of its node.
Requests go through the real tritonclient (unary and streaming) and the OpenAI HTTP API, and
every answer must equal the single-process greedy reference of the same checkpoint.
"""

import asyncio
import json
import os
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import tritonclient.grpc as grpcclient
from e2ekit import PROMPTS, Load, openai_completion, reference_outputs, triton_stream, triton_unary

from helix_dev.cluster import LocalCluster
from helix_dev.fleet import GPU_PRODUCT, SLOWDOWN, demo_manifests, demo_nodes, device_env

pytestmark = pytest.mark.timeout(290)
T = TypeVar("T")
NS, NAME, MODEL = "default", "demo", "tiny-llama"
REMOVED, RELABELLED, NEW_GPU = "gpu-east-1", "gpu-west-2", "SIM-A100"
CHILDREN = ("pods", "services", "configmaps")


@pytest.fixture
async def cluster(tmp_path: Path):
    """The stand-in cluster; leaving it stops every process its node agents started."""
    async with LocalCluster(tmp_path / "cluster", device_env) as local:
        yield local


async def until(check: Callable[[], Awaitable[T]], timeout: float, what: str,
                explain: Callable[[], Awaitable[Any]] | None = None) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f"; {await explain()}" if explain else ""
            raise AssertionError(f"not within {timeout:.0f}s: {what}{detail}")
        await asyncio.sleep(0.25)


def condition(status: dict[str, Any], kind: str) -> str | None:
    return next((c["status"] for c in status.get("conditions") or [] if c["type"] == kind), None)


def ready(pod: dict[str, Any]) -> bool:
    return condition(pod.get("status") or {}, "Ready") == "True"


class Scenario:
    """The HelixCluster under test and what the steps share."""

    def __init__(self, cluster: LocalCluster, tmp_path: Path) -> None:
        self.cluster, self.tmp_path = cluster, tmp_path
        self.manifests = demo_manifests()
        self.hxc = next(d for d in self.manifests if d["kind"] == "HelixCluster")
        self.timings: dict[str, float] = {}
        self.expected = None
        self.grpc = cluster.service_address(NS, NAME, 8001)
        self.http = f"http://{cluster.service_address(NS, NAME, 8000)}"

    async def status(self) -> dict[str, Any]:
        return ((await self.cluster.get(self.hxc)) or {}).get("status") or {}

    async def workers(self) -> list[dict[str, Any]]:
        return [p for p in await self.cluster.pods(NS)
                if p["metadata"]["labels"].get("app.kubernetes.io/component") == "worker"]

    async def serving(self) -> dict[str, Any] | None:
        """The status once Running with the rollout complete and every worker of the plan ready."""
        status = await self.status()
        rollout, active = status.get("rollout") or {}, status.get("activePlan") or {}
        if status.get("phase") != "Running" or rollout.get("state") != "Complete" \
                or rollout.get("targetHash") != active.get("hash"):
            return None
        workers = [p for p in await self.workers() if not p["metadata"].get("deletionTimestamp")]
        return status if len(workers) == active["nodes"] and all(map(ready, workers)) else None

    async def explain(self) -> str:
        status = await self.status()
        pods = [(p["metadata"]["name"], (p.get("status") or {}).get("phase"), ready(p))
                for p in await self.cluster.pods(NS)]
        return f"phase {status.get('phase')}, rollout {status.get('rollout')}, pods {pods}"

    async def step(self, name: str, coroutine: Awaitable[None]) -> None:
        began = time.monotonic()
        await coroutine
        self.timings[name] = round(time.monotonic() - began, 1)
        print(f"step {name}: {self.timings[name]} s", flush=True)

    def load(self) -> Load:
        return Load(self.grpc, self.http, MODEL, self.expected)

    # Steps ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """1 and 2: six simulated GPU nodes in two regions and a CPU node; apply the examples."""
        for node in demo_nodes():
            await self.cluster.apply(node)
        for doc in self.manifests:
            await self.cluster.apply(doc)

    async def become_ready(self) -> None:
        """3a: planned, pods up with their node's slowdown, front end serving."""
        status = await until(self.serving, 150, "the HelixCluster is Running", self.explain)
        assert status["activePlan"]["pipelines"] >= 2 and status["nodes"]["byRegion"] == {"eu-west": 3, "us-east": 3}
        configmap = await self.cluster.api.get(
            f"/api/v1/namespaces/{NS}/configmaps/{status['activePlan']['configMap']}")
        plan = json.loads(configmap["data"]["plan.json"])
        assert plan["planHash"] == status["activePlan"]["hash"]
        assert min(len(p["stages"]) for p in plan["pipelines"]) >= 2, "every pipeline spans several nodes"
        pods = await self.workers()
        nodes = {n["metadata"]["name"]: n for n in await self.cluster.api.list("/api/v1/nodes")}
        for pod in pods:
            node = pod["spec"]["nodeName"]
            assert node == pod["metadata"]["annotations"]["helix.dev/node"], "pinned to its planned node"
            run = self.cluster.agent_of(pod["metadata"]["name"]).find(pod["metadata"]["name"])
            environ = dict(item.split("=", 1) for item in
                           Path(f"/proc/{run.pid}/environ").read_text().split("\0") if "=" in item)
            gpu = nodes[node]["metadata"]["labels"][GPU_PRODUCT]
            assert float(environ["HELIX_SLOWDOWN"]) == SLOWDOWN[gpu], (node, gpu)
        first = pods[0]["metadata"]["name"]
        weights = self.cluster.agent_of(first).find(first).dir / "volumes" / "weights" / "random"
        checkpoint = Path(shutil.copytree(weights, self.tmp_path / "checkpoint"))
        self.expected = await asyncio.to_thread(reference_outputs, checkpoint)

    async def serve_requests(self) -> None:
        """3b: tritonclient unary and streaming, OpenAI HTTP plain and streaming, all equal the reference."""
        expected = self.expected

        def server_ready() -> bool:
            with grpcclient.InferenceServerClient(url=self.grpc) as client:
                return bool(client.is_server_ready())

        # The front-end pod is Ready once it answers (/healthz); KServe's ServerReady says a pipeline
        # is up, which follows within its probe interval of the last worker's readiness.
        await until(lambda: asyncio.to_thread(server_ready), 30, "the front end has a pipeline up", self.explain)

        def call() -> None:
            with grpcclient.InferenceServerClient(url=self.grpc) as client:
                assert client.is_server_ready() and client.is_model_ready(MODEL)
                for prompt in PROMPTS[:2]:
                    assert triton_unary(client, MODEL, prompt) == expected.tokens[prompt]
                assert triton_stream(client, MODEL, list(PROMPTS)) == expected.tokens
            for prompt in PROMPTS[2:4]:
                assert openai_completion(self.http, MODEL, prompt) == expected.texts[prompt]
                assert openai_completion(self.http, MODEL, prompt, stream=True) == expected.texts[prompt]

        await asyncio.to_thread(call)

    async def replan_under_load(self) -> None:
        """4: relabel one node to another GPU type and remove another while clients keep sending."""
        before = await self.status()
        plan_nodes = {p["metadata"]["annotations"]["helix.dev/node"] for p in await self.workers()}
        assert {REMOVED, RELABELLED} <= plan_nodes, "the change must hit nodes the running plan uses"
        async with self.load() as load:
            await until(lambda: _true(len(load.outcomes) >= 3), 60, "requests complete before the change")
            changed = time.monotonic()
            await self.cluster.api.patch(f"/api/v1/nodes/{RELABELLED}",
                                         {"metadata": {"labels": {GPU_PRODUCT: NEW_GPU}}})
            await self.cluster.api.delete(f"/api/v1/nodes/{REMOVED}")

            async def replanned() -> dict[str, Any] | None:
                status = await self.serving()
                return status if status and status["activePlan"]["hash"] != before["activePlan"]["hash"] else None

            status = await until(replanned, 180, "the new plan is rolled out", self.explain)
            done, measured = time.monotonic(), status.get("observedAt")
            await until(lambda: _true(len(load.since(done)) >= 3), 60, "requests complete after the rollout")

            async def observed() -> float | None:
                """The operator read the new front end's token counter twice, under load."""
                now = await self.status()
                return now.get("observedAt") != measured and now.get("observedTokensPerSecond")

            print(f"observed {await until(observed, 30, 'observedTokensPerSecond', self.explain)} tok/s", flush=True)
        assert load.failures() == [], load.failures()[:5]
        # Every node changes layers here; the rollout frees one new pipeline's nodes while an old
        # pipeline keeps serving, so no request waits out a model load (switching first: 45-60 s).
        assert load.slowest() < 20, f"a request took {load.slowest():.1f} s during the replan"
        print(f"replan: {len(load.since(changed))} requests during and after the change (slowest "
              f"{load.slowest():.1f} s), {before['activePlan']['hash']} -> {status['activePlan']['hash']}", flush=True)
        replan = status["lastReplan"]
        assert replan["trigger"] == "PlanInfeasible" and replan["outcome"] == "Applied"
        assert replan["fromTokensPerSecond"] == before["activePlan"]["tokensPerSecond"]
        assert replan["toTokensPerSecond"] == status["activePlan"]["tokensPerSecond"] > 0
        assert status["nodes"]["byGpuType"] == {"SIM-A100": 3, "SIM-L4": 1, "SIM-T4": 1}
        workers = await self.workers()
        assert REMOVED not in {p["spec"]["nodeName"] for p in workers}
        assert {p["metadata"]["labels"]["helix.dev/plan-hash"] for p in workers} == {status["activePlan"]["hash"]}

    async def survive_failures(self) -> None:
        """5: a killed worker process is restarted in place, an evicted pod is recreated by the
        operator; traffic moves to other pipelines meanwhile and nothing fails."""
        async with self.load() as load:
            await until(lambda: _true(len(load.outcomes) >= 3), 60, "requests complete before the failures")
            workers = sorted(await self.workers(), key=lambda p: p["metadata"]["name"])
            killed, evicted = [p["metadata"] for p in workers][:2]
            run = self.cluster.agent_of(killed["name"]).find(killed["name"])
            os.kill(run.pid, signal.SIGKILL)

            async def restarted() -> bool:
                pod = next((p for p in await self.workers() if p["metadata"]["uid"] == killed["uid"]), None)
                return bool(pod) and ready(pod) and pod["status"]["containerStatuses"][0]["restartCount"] >= 1

            await until(restarted, 60, "the killed worker is restarted in place", self.explain)
            await self.cluster.agent_of(evicted["name"]).evict(evicted["name"])

            async def recreated() -> bool:
                pods = {p["metadata"]["name"]: p for p in await self.workers()}
                pod = pods.get(evicted["name"])
                return bool(pod) and pod["metadata"]["uid"] != evicted["uid"] and ready(pod)

            await until(recreated, 90, "the operator recreates the evicted pod", self.explain)
            await until(self.serving, 60, "the HelixCluster is Running again", self.explain)
            done = time.monotonic()
            await until(lambda: _true(len(load.since(done)) >= 3), 60, "requests complete after the failures")
        assert load.failures() == [], load.failures()[:5]
        print(f"failures: {len(load.outcomes)} requests (slowest {load.slowest():.1f} s)", flush=True)

    async def delete(self) -> None:
        """6: deleting the HelixCluster removes every child object and stops every process."""
        pids = self.cluster.pids()
        assert len(pids) == len(await self.workers()) + 1, "a process per worker pod and the front end"
        await self.cluster.delete(self.hxc)

        async def gone() -> bool:
            lists = [await self.cluster.api.list(f"/api/v1/namespaces/{NS}/{kind}") for kind in CHILDREN]
            lists.append(await self.cluster.api.list(f"/apis/apps/v1/namespaces/{NS}/deployments"))
            return not any(lists) and await self.cluster.get(self.hxc) is None and not self.cluster.pids()

        await until(gone, 60, "every child object and process is gone", self.explain)
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)


async def _true(value: bool) -> bool:
    return value


async def test_operator_planner_and_data_plane_work_as_one_system(cluster: LocalCluster, tmp_path: Path) -> None:
    scenario = Scenario(cluster, tmp_path)
    await scenario.step("1-2 nodes and HelixCluster applied", scenario.start())
    await scenario.step("3 Ready", scenario.become_ready())
    await scenario.step("3 requests equal the reference", scenario.serve_requests())
    await scenario.step("4 relabel + remove under load", scenario.replan_under_load())
    await scenario.step("5 kill + evict under load", scenario.survive_failures())
    await scenario.step("6 delete", scenario.delete())
    print("timings:", scenario.timings, flush=True)
