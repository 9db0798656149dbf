"""The local stand-in cluster: API server, operator, scheduler, controllers, kube-proxy, node agents.

`LocalCluster` starts kmock's API emulator and the operator in this event loop, and one
control loop that plays the rest of a cluster each tick: it lists pods, nodes, Deployments
and Services through the API, binds pending pods (`scheduler`), runs the Deployment
controller (`deployments`), deletes pods whose node is gone (pod GC), gives every Node a
node agent (`kubelet`) whose device variables come from the node's labels, and refreshes
the Service proxies (`network`). Leaving the context stops every process it started.

With `emulate_network` the nodes are hosts of an emulated multi-region network (`emulation`),
built when the first HelixCluster is seen; until then no pod runs. Leaving the context then
also removes the network's namespaces (those of crashed runs go when the next one builds its own).
"""

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from helix_dev.apiserver import ApiServer, api_server
from helix_dev.client import Api, ApiError, path_of, pod_path
from helix_dev.deployments import sync_deployment
from helix_dev.emulation import NodeHost, build_network, check_privileges, planner_cluster
from helix_dev.inprocess import operator_in_process, server_url
from helix_dev.kubelet import NodeAgent
from helix_dev.network import LOOPBACK, PortBook, ServiceProxy
from helix_dev.scheduler import schedule
from helix_operator.api.spec import SpecError
from helix_operator.control.context import OperatorContext
from helix_operator.control.runtime import RunOptions
from helix_planner.errors import PlanningError
from helix_worker.fleet.netem import EmulatedNetwork

log = logging.getLogger(__name__)
TICK_SECONDS = 0.2
PLURALS = {"Node": "nodes", "Pod": "pods", "Service": "services", "ConfigMap": "configmaps",
           "Deployment": "deployments", "HelixCluster": "helixclusters", "GPUProfile": "gpuprofiles"}
CLUSTER_SCOPED = ("Node", "GPUProfile")
HELIX_API = "helix.dev/v1alpha1"

DeviceEnv = Callable[[Mapping[str, str]], dict[str, str]]


def object_path(doc: Mapping[str, Any], *, named: bool = True) -> str:
    kind, metadata = doc["kind"], doc["metadata"]
    namespace = None if kind in CLUSTER_SCOPED else metadata.get("namespace", "default")
    return path_of(doc["apiVersion"], PLURALS[kind], namespace, metadata["name"] if named else None)


class LocalCluster:
    def __init__(self, workdir: Path, device_env: DeviceEnv, *,
                 operator_options: RunOptions = RunOptions(resync_seconds=30, planner_threads=1, observe_seconds=2),
                 emulate_network: bool = False) -> None:
        if emulate_network:
            check_privileges()
        self.emulate_network = emulate_network
        self.network: EmulatedNetwork | None = None
        self.workdir = Path(workdir)
        self.device_env = device_env
        self.operator_options = operator_options
        self.ports = PortBook()
        self.proxy = ServiceProxy(self.ports)
        self.agents: dict[str, NodeAgent] = {}
        self._server: ApiServer | None = None
        self.operator: OperatorContext | None = None
        self._api: Api | None = None
        self._stack = contextlib.AsyncExitStack()
        self._loop: asyncio.Task[None] | None = None
        self._lost: set[asyncio.Task[None]] = set()

    @property
    def server(self) -> ApiServer:
        if self._server is None:
            raise RuntimeError("the stand-in cluster is not running: use it in `async with`")
        return self._server

    @property
    def api(self) -> Api:
        if self._api is None:
            raise RuntimeError("the stand-in cluster is not running: use it in `async with`")
        return self._api

    @property
    def url(self) -> str:
        return server_url(self.server)

    async def __aenter__(self) -> "LocalCluster":
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            self._server = await self._stack.enter_async_context(api_server())
            self._api = Api(self.url)
            self._stack.push_async_callback(self._api.close)
            options = dataclasses.replace(self.operator_options, frontend_address=self._pod_address)
            self.operator = await self._stack.enter_async_context(operator_in_process(self.server, options))
            self._stack.push_async_callback(self._close_network)  # after every pod has stopped
            self._stack.push_async_callback(self._stop)
            self._loop = asyncio.create_task(self._control_loop(), name="stand-in control loop")
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    # kubectl-like conveniences ------------------------------------------------------------

    async def apply(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Create `doc`, or merge its metadata labels and spec into the live object."""
        try:
            return await self.api.create(object_path(doc, named=False), dict(doc))
        except ApiError as err:
            if err.status != 409:
                raise
        patch = {k: v for k, v in doc.items() if k in ("spec", "data")}
        patch["metadata"] = {k: v for k, v in doc["metadata"].items() if k in ("labels", "annotations")}
        patched = await self.api.patch(object_path(doc), patch)
        if patched is None:
            raise ApiError(404, f"{object_path(doc)} was deleted while it was applied")
        return patched

    async def delete(self, doc: Mapping[str, Any]) -> bool:
        return await self.api.delete(object_path(doc))

    async def get(self, doc: Mapping[str, Any]) -> dict[str, Any] | None:
        return await self.api.get(object_path(doc))

    async def pods(self, namespace: str | None = None) -> list[dict[str, Any]]:
        return await self.api.list(path_of("v1", "pods", namespace))

    def service_address(self, namespace: str, name: str, port: int) -> str:
        """Where the Service's port answers on this machine (127.0.0.1:PORT)."""
        return self.proxy.address(namespace, name, port)

    def _pod_address(self, pod: Mapping[str, Any], port: int) -> str | None:
        """Where the operator reaches a pod's container port: its local port (pods share 127.0.0.1)."""
        local = self.ports.pod_port(pod, port)
        return None if local is None else f"{LOOPBACK}:{local}"

    def pids(self) -> list[int]:
        """Every process the node agents run now."""
        return [pid for agent in self.agents.values() for pid in agent.pids]

    def agent_of(self, pod_name: str) -> NodeAgent | None:
        return next((a for a in self.agents.values() if a.find(pod_name) is not None), None)

    def log_of(self, pod_name: str) -> Path | None:
        run = agent.find(pod_name) if (agent := self.agent_of(pod_name)) else None
        return run.log_path if run else None

    # The control loop ---------------------------------------------------------------------

    async def _control_loop(self) -> None:
        while True:
            try:
                await self._tick()
            except Exception:  # keep playing the cluster through API hiccups
                log.exception("stand-in cluster tick failed")
            await asyncio.sleep(TICK_SECONDS)

    async def _tick(self) -> None:
        api = self.api
        nodes = await api.list(path_of("v1", "nodes"))
        pods = await api.list(path_of("v1", "pods"))
        await schedule(api, pods, nodes)
        for deployment in await api.list(path_of("apps/v1", "deployments")):
            await sync_deployment(api, deployment, pods)
        labels = {n["metadata"]["name"]: n["metadata"].get("labels") or {} for n in nodes}
        for name in set(self.agents) - set(labels):
            self._node_lost(self.agents.pop(name))
        for pod in pods:
            node = (pod.get("spec") or {}).get("nodeName")
            if node and node not in labels:  # pod GC: the node is gone, so are its pods
                await api.delete(pod_path(pod), grace_seconds=0)
            elif node:  # its DNS name resolves to it for every pod, from now on
                self.ports.name_pod(pod)
        if self.emulate_network and self.network is None and not await self._build_network(nodes):
            return  # no pod runs before its node is in the network
        for name, node_labels in labels.items():
            agent = self.agents.get(name)
            if agent is None:
                host = NodeHost(self.network, name) if self.network is not None else None
                agent = self.agents[name] = NodeAgent(name, api, self.ports, self.workdir / "nodes",
                                                      self.device_env(node_labels), host)
            agent.device_env = self.device_env(node_labels)
            await agent.sync([p for p in pods if (p.get("spec") or {}).get("nodeName") == name])
        await self.proxy.sync(await api.list(path_of("v1", "services")), pods)

    async def _build_network(self, nodes: list[dict[str, Any]]) -> bool:
        """Build the emulated network once a HelixCluster (the first by namespace and name) gives the
        links and its pools discover nodes; whether it is built."""
        helixclusters = await self.api.list(path_of(HELIX_API, PLURALS["HelixCluster"]))
        if not helixclusters or self.operator is None:
            return False
        first = min(helixclusters, key=lambda c: (c["metadata"]["namespace"], c["metadata"]["name"]))
        profiles = await self.api.list(path_of(HELIX_API, PLURALS["GPUProfile"]))
        try:
            cluster = planner_cluster(first, nodes, profiles, self.operator.catalog)
        except (SpecError, PlanningError) as err:  # the operator says so in the HelixCluster's status
            log.debug("the emulated network waits for a HelixCluster to plan: %s", err)
            return False
        names = [node["metadata"]["name"] for node in nodes]
        self.network = await asyncio.to_thread(build_network, cluster, names, self.workdir / "network")
        self.ports.node_addresses = {name: host.address for name, host in self.network.hosts.items()}
        log.info("emulated network built: %s", self.workdir / "network" / "network.json")
        return True

    async def _close_network(self) -> None:
        if self.network is not None:
            await asyncio.to_thread(self.network.close)

    def _node_lost(self, agent: NodeAgent) -> None:
        """The machine is gone: its processes die with it."""
        log.info("node %s is gone: killing its pods' processes", agent.node)
        task = asyncio.create_task(agent.shutdown(kill=True))
        self._lost.add(task)
        task.add_done_callback(self._lost.discard)

    async def _stop(self) -> None:
        if self._loop is not None:
            self._loop.cancel()
            await asyncio.gather(self._loop, return_exceptions=True)
        await asyncio.gather(*self._lost, return_exceptions=True)
        await asyncio.gather(*(agent.shutdown(grace=5.0) for agent in self.agents.values()), return_exceptions=True)
        await self.proxy.close()
