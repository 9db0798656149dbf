"""`helix dev cluster`: the whole system on this machine, with a live status view.

It starts the stand-in cluster (API emulator, operator, node agents), registers the simulated
GPU nodes, applies the example GPUProfiles and HelixCluster, and redraws the status view
while the operator plans and the pods start; once the cluster is Ready a sample completion
streams in through the front end's OpenAI endpoint. With `scenario` it then relabels a node
and removes another (replan and rollout), kills a worker process, and deletes the cluster.
With `emulate_network` the nodes' pods talk over an emulated multi-region network (`emulation`).
"""

import asyncio
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import aiohttp

from helix_dev.client import path_of
from helix_dev.cluster import LocalCluster
from helix_dev.fleet import GPU_PRODUCT, demo_manifests, demo_nodes, device_env
from helix_dev.view import Snapshot, render

CLEAR = "\x1b[H\x1b[2J"
REDRAW_SECONDS = 0.5
STEP_TIMEOUT = 180.0


@dataclass(frozen=True)
class DemoOptions:
    workdir: Path
    scenario: bool = False
    prompt: str = "Helix serves large language models over"
    max_tokens: int = 24
    exit_after_sample: bool = False
    emulate_network: bool = False


class Demo:
    def __init__(self, cluster: LocalCluster, options: DemoOptions, out: TextIO) -> None:
        self.cluster, self.options, self.out = cluster, options, out
        self.manifests = demo_manifests()
        self.hxc = next(d for d in self.manifests if d["kind"] == "HelixCluster")
        self.namespace, self.name = self.hxc["metadata"]["namespace"], self.hxc["metadata"]["name"]
        self.step, self.sample = "", ""
        self.last = ""
        self.tty = out.isatty()
        frontend = self.hxc["spec"].get("frontend", {}).get("service", {})
        self.http = f"http://{cluster.service_address(self.namespace, self.name, frontend.get('httpPort', 8000))}"
        self.grpc = cluster.service_address(self.namespace, self.name, frontend.get("grpcPort", 8001))

    async def snapshot(self) -> Snapshot:
        api = self.cluster.api
        events = [e for e in await api.list(path_of("v1", "events", self.namespace))
                  if (e.get("involvedObject") or {}).get("name") == self.name]
        endpoints = {"OpenAI HTTP": f"{self.http}/v1", "KServe gRPC": self.grpc, "API server": self.cluster.url,
                     "logs": str(self.options.workdir)}
        if self.cluster.network is not None:
            endpoints["network"] = str(self.cluster.network.workdir / "network.json")
        return Snapshot(await self.cluster.get(self.hxc), await api.list(path_of("v1", "nodes")),
                        await self.cluster.pods(self.namespace), events, endpoints, self.step, self.sample)

    async def draw(self) -> None:
        text = render(await self.snapshot())
        if self.tty:
            self.out.write(CLEAR + text + "\n")
        elif text != self.last:  # a log, not a screen: only what changed, once
            self.out.write(f"--- {time.strftime('%H:%M:%S')}\n{text}\n")
        self.out.flush()
        self.last = text

    async def until(self, check: Callable[[], Awaitable[Any]], what: str) -> Any:
        """Redraw until `check` returns something truthy."""
        deadline = time.monotonic() + STEP_TIMEOUT
        while not (value := await check()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what}: not within {STEP_TIMEOUT:.0f}s; logs are in {self.options.workdir}")
            await self.draw()
            await asyncio.sleep(REDRAW_SECONDS)
        await self.draw()
        return value

    async def status(self) -> dict[str, Any]:
        return ((await self.cluster.get(self.hxc)) or {}).get("status") or {}

    async def running(self) -> dict[str, Any] | None:
        status = await self.status()
        rollout = status.get("rollout") or {}
        complete = rollout.get("state") == "Complete" and rollout.get("targetHash") == status["activePlan"]["hash"] \
            if status.get("activePlan") else False
        return status if status.get("phase") == "Running" and complete else None

    async def stream_sample(self) -> None:
        """The prompt's completion, token by token, from the OpenAI endpoint (server-sent events)."""
        self.sample = f"{self.options.prompt!r} ->"
        body = {"model": self.hxc["spec"]["model"]["name"], "prompt": self.options.prompt, "temperature": 0,
                "max_tokens": self.options.max_tokens, "stream": True}
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{self.http}/v1/completions", json=body) as response:
                async for line in response.content:
                    text = line.decode().strip()
                    if text.startswith("data: ") and text != "data: [DONE]":
                        self.sample += json.loads(text.removeprefix("data: "))["choices"][0]["text"]
                        await self.draw()

    async def run(self) -> None:
        self.step = "registering 6 simulated GPU nodes in 2 regions; applying GPUProfiles and the HelixCluster"
        for doc in demo_nodes() + self.manifests:
            await self.cluster.apply(doc)
        self.step = "the operator plans; pods start (init container writes the weights, then the worker loads them)"
        await self.until(self.running, "the HelixCluster becomes Running")
        self.step = "Ready: streaming a sample completion through the front end"
        await self.stream_sample()
        if self.options.exit_after_sample:
            return
        if self.options.scenario:
            await self.scenario()
            return
        self.step = (f"serving; try: curl {self.http}/v1/completions -H 'Content-Type: application/json' "
                     f"-d '{{\"prompt\": \"Helix\", \"max_tokens\": 8}}'   (Ctrl-C stops everything)")
        while True:
            await self.draw()
            await asyncio.sleep(REDRAW_SECONDS)

    async def scenario(self) -> None:
        api = self.cluster.api
        before = (await self.status())["activePlan"]["hash"]
        self.step = "relabelling gpu-west-2 as SIM-A100 and removing gpu-east-1: the operator replans and rolls out"
        await api.patch(path_of("v1", "nodes", name="gpu-west-2"), {"metadata": {"labels": {GPU_PRODUCT: "SIM-A100"}}})
        await api.delete(path_of("v1", "nodes", name="gpu-east-1"))

        async def replanned() -> bool:
            status = await self.running()
            return bool(status) and status is not None and bool(status["activePlan"]["hash"] != before)

        await self.until(replanned, "the new plan is rolled out")
        await self.stream_sample()
        victim = next(p for p in await self.cluster.pods(self.namespace) if "-w-" in p["metadata"]["name"])
        self.step = f"killing the worker process of {victim['metadata']['name']}: its node agent restarts it"
        agent = self.cluster.agent_of(victim["metadata"]["name"])
        run = agent.find(victim["metadata"]["name"]) if agent else None
        if run is None or run.pid is None:
            raise RuntimeError(f"{victim['metadata']['name']} has no process running to kill")
        os.kill(run.pid, signal.SIGKILL)
        await asyncio.sleep(2)
        await self.until(self.running, "the cluster is Running again")
        await self.stream_sample()
        self.step = "deleting the HelixCluster: every child object and process goes"
        await self.cluster.delete(self.hxc)

        async def gone() -> bool:
            return not await self.cluster.pods(self.namespace) and not self.cluster.pids()

        await self.until(gone, "everything is gone")
        self.step = "done: the HelixCluster, its pods and processes are gone"
        await self.draw()


def run_demo(options: DemoOptions, out: TextIO = sys.stdout) -> int:
    options.workdir.mkdir(parents=True, exist_ok=True)
    log = options.workdir / "cluster.log"
    handler = logging.FileHandler(log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    out.write(f"starting the API emulator, the operator and the node agents (log: {log})\n")

    async def main() -> None:
        async with LocalCluster(options.workdir, device_env, emulate_network=options.emulate_network) as cluster:
            await Demo(cluster, options, out).run()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        out.write("\nstopped: every process the node agents started is gone\n")
    return 0
