"""Operator benchmark: how fast a node-label change becomes a new plan in status, at scale.

    python bench/operator.py --quick      # CI: 500 nodes, one relabel, 5 s planner limit
    python bench/operator.py              # 500 nodes, three relabels, 30 s planner limit

kmock's Kubernetes API emulator runs in this process (the same harness as tests/operator; no
cluster needed) with 500 GPU nodes in 5 regions labelled as GKE and NVIDIA GPU feature
discovery label them; the operator runs in a child process (`--serve URL`), so its memory is
its own. Each round relabels the GPU type of a node the target plan uses, so that plan breaks
and must be replaced, and measures the wall time from the PATCH to `status.lastReplan`
naming the replacement (debounce + planning + status write); solve seconds come from the
plan document. No fake kubelet runs: pods stay unready, so the timings are the operator's.
"""

import argparse
import asyncio
import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "operator"))  # fakecluster, opkit

import kopf
from fakecluster import Harness, api_server
from kubernetes.client import Configuration
from opkit import GFD_PRODUCT, GKE_ACCELERATOR, POOL_LABEL, REGION, node
from results import markdown_table, write_table  # bench/ is the script's directory

from helix_operator.control.runtime import RunOptions, start

NS, NAME = "bench", "bench"
HXC = "helix.dev/v1alpha1/helixclusters"
GPUS = [(GKE_ACCELERATOR, "nvidia-tesla-a100"), (GKE_ACCELERATOR, "nvidia-l4"), (GFD_PRODUCT, "Tesla-T4"),
        (GFD_PRODUCT, "NVIDIA-A10G"), (GFD_PRODUCT, "NVIDIA-H100-80GB-HBM3")]
REGIONS = ["us-central1", "us-east4", "europe-west4", "asia-east1", "onprem-ams"]


def memory_mib(pid: int) -> dict[str, float]:
    """Resident set now and at its peak (VmRSS, VmHWM) of a process, in MiB."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) / 1024 for key in ("VmRSS", "VmHWM")}


async def serve(url: str) -> None:
    """The child: the operator, logged in to the emulator, until SIGTERM."""
    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True)

    operator = await start(RunOptions(resync_seconds=300), Configuration(host=url), login=login)
    await operator.finish()


def fleet(size: int) -> list[dict[str, Any]]:
    return [node(f"gpu-{i:04d}", {GPUS[i % len(GPUS)][0]: GPUS[i % len(GPUS)][1],
                                  REGION: REGIONS[(i // len(GPUS)) % len(REGIONS)], POOL_LABEL: "fleet"})
            for i in range(size)]


def helixcluster(time_limit: float, debounce: float) -> dict[str, Any]:
    return {"apiVersion": "helix.dev/v1alpha1", "kind": "HelixCluster", "metadata": {"name": NAME, "namespace": NS},
            "spec": {
                "model": {"name": "llama2-70b"},
                "nodePools": [{"name": "fleet", "selector": {"matchLabels": {POOL_LABEL: "fleet"}}}],
                "network": {"intraRegion": {"bandwidth": "25Gbps", "latency": "1ms"},
                            "interRegion": {"bandwidth": "2Gbps", "latency": "40ms"},
                            "frontend": {"region": "us-central1"}},
                "planner": {"timeLimitSeconds": time_limit, "threads": 2, "debounceSeconds": debounce,
                            "replanMinIntervalSeconds": 0},
                "worker": {"image": "helix/worker:bench"},
            }}


def status(operator: Harness) -> dict[str, Any]:
    return (operator.get(HXC, NS, NAME) or {}).get("status") or {}


async def until(check: Callable[[], Any], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout:.0f}s")
        await asyncio.sleep(0.05)


def target_plan(operator: Harness) -> dict[str, Any]:
    """The plan document the workers converge to (from its ConfigMap)."""
    target = status(operator)["rollout"]["targetHash"]
    return json.loads(operator.get("v1/configmaps", NS, f"{NAME}-plan-{target}")["data"]["plan.json"])


async def relabel_round(operator: Harness, timeout: float) -> dict[str, Any]:
    """Break the target plan by relabelling one of its nodes' GPU; time until status names the replacement."""
    before, target = status(operator)["lastReplan"], status(operator)["rollout"]["targetHash"]
    victim = sorted(n["name"] for n in target_plan(operator)["nodes"] if n["gpuType"] != "V100")[0]
    started = time.monotonic()
    await operator.request("patch", f"/api/v1/nodes/{victim}",
                           {"metadata": {"labels": {GKE_ACCELERATOR: "nvidia-tesla-v100", GFD_PRODUCT: None}}})
    await until(lambda: status(operator)["lastReplan"] != before
                and status(operator)["lastReplan"]["trigger"] == "PlanInfeasible", timeout, "the replan")
    latency = time.monotonic() - started
    record = status(operator)["lastReplan"]
    await until(lambda: status(operator)["rollout"]["targetHash"] != target, timeout, "the new target")
    return {"node": victim, "latency": latency, "solve": target_plan(operator)["solver"]["seconds"],
            "from": record.get("fromTokensPerSecond", 0.0), "to": record["toTokensPerSecond"],
            "outcome": record["outcome"]}


async def main(quick: bool) -> None:
    size, rounds = 500, (1 if quick else 3)
    time_limit, debounce = (5.0, 1.0) if quick else (30.0, 1.0)
    timeout = time_limit * 4 + 60
    async with api_server() as api:
        for body in fleet(size):
            api.objects["v1/nodes", None, body["metadata"]["name"]] = body
        url = str(api.servers[0].url).rstrip("/")
        child = subprocess.Popen([sys.executable, "-W", "ignore", __file__, "--serve", url])
        operator = Harness(api, context=None)
        try:
            started = time.monotonic()
            await operator.request("post", f"/apis/helix.dev/v1alpha1/namespaces/{NS}/helixclusters",
                                   helixcluster(time_limit, debounce))
            await until(lambda: status(operator).get("activePlan"), timeout, "the first plan")
            first, first_seconds = status(operator)["activePlan"], time.monotonic() - started
            print(f"first plan in status after {first_seconds:.1f}s", file=sys.stderr)
            await until(lambda: len(operator.live("v1/pods", NS)) == first["nodes"] and status(operator).get("rollout"),
                        timeout, "the worker pods")
            memory = {"after first plan and pods": memory_mib(child.pid)}
            results = [await relabel_round(operator, timeout) for _ in range(rounds)]
            memory["after relabels"] = memory_mib(child.pid)
        finally:
            child.send_signal(signal.SIGTERM)
            await asyncio.to_thread(child.wait, 30)
    first_plan = (f"First plan in status {first_seconds:.1f} s after the HelixCluster was created (operator start "
                  f"included): {first['nodes']} of {size} nodes, {first['pipelines']} pipelines, "
                  f"{first['tokensPerSecond']:.1f} tok/s, solve {first['solveSeconds']} s.")
    relabels = markdown_table(
        ("round", "relabelled node", "PATCH -> new plan in status, s", "solve s", "tok/s before", "tok/s after",
         "outcome"),
        [(i, r["node"], f"{r['latency']:.2f}", f"{r['solve']:.2f}", f"{r['from']:.1f}", f"{r['to']:.1f}",
          r["outcome"]) for i, r in enumerate(results, 1)])
    footprint = markdown_table(("operator process", "RSS MiB", "peak MiB"),
                               [(stage, f"{mib['VmRSS']:.1f}", f"{mib['VmHWM']:.1f}") for stage, mib in memory.items()])
    print(f"\n{first_plan}\n\n{relabels}\n\n{footprint}")
    write_table("operator", f"{size} nodes in 5 regions, planner limit {time_limit:g} s, debounce {debounce:g} s.\n\n"
                f"{first_plan}\n\nNode-label change to new plan in status:\n\n{relabels}\n\n"
                f"Operator memory ({first['nodes']} worker pods, {size}-node index):\n\n{footprint}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round, 5 s planner limit (CI)")
    parser.add_argument("--serve", metavar="URL", help=argparse.SUPPRESS)  # the child process
    args = parser.parse_args()
    asyncio.run(serve(args.serve) if args.serve else main(args.quick))
