"""Pod IPs, cluster DNS and Service virtual IPs, all on 127.0.0.1 (or, in an emulated network,
pods at their node's address).

Every pod shares the loopback address, so a container port becomes a local port: one per
(pod identity, container port), where a pod with `hostname` and `subdomain` is identified
by that DNS name (so a replacement pod on the same node answers where the old one did, as
the name would resolve to it in a cluster) and any other pod by its name. A DNS name with a
port in a container's arguments (`w-gpu-0.demo-workers.default.svc:50051`) translates to the
local port standing for it. In an emulated network (`emulation`; `node_addresses` set) a pod's
name translates to its node's address and that port, once a pod of that identity is bound to a
node (until then it stays unresolved, as DNS has no record for it yet), and a Service's name
stays unresolved (its proxy serves this machine, outside the emulated network); this machine
still reaches every pod port at 127.0.0.1 and the same port (the portals). Services with a cluster
IP get a TCP proxy (a userspace kube-proxy) on this machine: each new connection goes to a
Ready pod that is not terminating, trying the next one if a pod refuses.
"""

import asyncio
import contextlib
import itertools
import logging
import re
import socket
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from helix_operator.api.meta import condition_true

log = logging.getLogger(__name__)
LOOPBACK = "127.0.0.1"
CLUSTER_DOMAIN = "cluster.local"
DNS_WITH_PORT = re.compile(r"(?<![\w.-])([a-z0-9][-a-z0-9.]*\.svc(?:\.cluster\.local)?):(\d+)\b")
PIPE_CHUNK = 1 << 16

Owner = tuple[str, ...]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def pod_owner(pod: Mapping[str, Any]) -> Owner:
    metadata, spec = pod["metadata"], pod.get("spec") or {}
    if spec.get("hostname") and spec.get("subdomain"):
        return ("pod", metadata["namespace"], spec["subdomain"], spec["hostname"])
    return ("pod", metadata["namespace"], metadata["name"])


def container_port(pod: Mapping[str, Any], port: int | str) -> int | None:
    """A numeric container port, or the number of a named one."""
    if isinstance(port, int) or str(port).isdigit():
        return int(port)
    for container in (pod.get("spec") or {}).get("containers") or []:
        for declared in container.get("ports") or []:
            if declared.get("name") == port:
                return int(declared["containerPort"])
    return None


class PortBook:
    """Local ports standing for pod and Service addresses, and the DNS names that lead to them."""

    def __init__(self) -> None:
        self._ports: dict[tuple[Owner, int], int] = {}
        self._names: dict[str, Owner] = {}
        self._nodes: dict[Owner, str] = {}  # pod identity -> the node its latest pod is bound to
        self.node_addresses: Mapping[str, str] | None = None  # an emulated network's; None: pods on 127.0.0.1

    def port(self, owner: Owner, port: int) -> int:
        key = (owner, int(port))
        if key not in self._ports:
            taken = set(self._ports.values())
            while (candidate := free_port()) in taken:
                pass
            self._ports[key] = candidate
        return self._ports[key]

    def pod_port(self, pod: Mapping[str, Any], port: int | str) -> int | None:
        number = container_port(pod, port)
        return None if number is None else self.port(pod_owner(pod), number)

    def name_pod(self, pod: Mapping[str, Any]) -> None:
        """Register the pod's DNS name (hostname.subdomain.namespace.svc), if it has one, and its node."""
        owner = pod_owner(pod)
        node = (pod.get("spec") or {}).get("nodeName")
        if node:
            self._nodes[owner] = node
        if len(owner) == 4:
            _, namespace, subdomain, hostname = owner
            self._register(f"{hostname}.{subdomain}.{namespace}.svc", owner)

    def name_service(self, namespace: str, name: str) -> Owner:
        owner = ("svc", namespace, name)
        self._register(f"{name}.{namespace}.svc", owner)
        return owner

    def _register(self, name: str, owner: Owner) -> None:
        self._names[name] = owner
        self._names[f"{name}.{CLUSTER_DOMAIN}"] = owner

    def translate(self, text: str) -> str:
        """`text` with every known `NAME.svc:PORT` replaced by its local address. A pod's name
        (hostname.subdomain.namespace.svc) stands for that pod identity even before such a pod is
        seen, as DNS would resolve it once the pod runs (in an emulated network: once it is bound)."""
        def local(match: re.Match[str]) -> str:
            name = match.group(1).removesuffix(f".{CLUSTER_DOMAIN}")
            owner = self._names.get(name)
            labels = name.split(".")
            if owner is None and len(labels) == 4:  # hostname, subdomain, namespace, "svc"
                owner = ("pod", labels[2], labels[1], labels[0])
            host = None if owner is None else self.host(owner)
            if owner is None or host is None:
                return match.group(0)
            return f"{host}:{self.port(owner, int(match.group(2)))}"

        return DNS_WITH_PORT.sub(local, text)

    def host(self, owner: Owner) -> str | None:
        """The address pods reach `owner` at: 127.0.0.1 on loopback; in an emulated network a pod's
        node's, and None (unresolved) for a pod identity not bound yet and for Services, whose proxy
        serves this machine, outside the emulated network."""
        if self.node_addresses is None:
            return LOOPBACK
        node = self._nodes.get(owner)
        return None if node is None else self.node_addresses.get(node)


class ServiceProxy:
    """One listener per Service port on 127.0.0.1, forwarding connections to ready endpoints."""

    def __init__(self, ports: PortBook) -> None:
        self.ports = ports
        self._servers: dict[tuple[Owner, int], asyncio.Server] = {}
        self._endpoints: dict[tuple[Owner, int], list[int]] = {}
        self._turn = itertools.count()
        self._pipes: set[asyncio.Task[None]] = set()

    def address(self, namespace: str, service: str, port: int) -> str:
        return f"{LOOPBACK}:{self.ports.port(('svc', namespace, service), port)}"

    async def sync(self, services: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]]) -> None:
        """Open listeners for new Service ports, close those of deleted Services, refresh endpoints."""
        pods = list(pods)
        wanted: dict[tuple[Owner, int], list[int]] = {}
        for service in services:
            spec, metadata = service.get("spec") or {}, service["metadata"]
            owner = self.ports.name_service(metadata["namespace"], metadata["name"])
            if spec.get("clusterIP") == "None":
                continue  # headless: DNS names of the pods only
            backends = [p for p in pods if _selected(p, metadata["namespace"], spec.get("selector") or {})]
            for port in spec.get("ports") or []:
                target = port.get("targetPort", port["port"])
                wanted[(owner, int(port["port"]))] = [local for p in backends
                                                      if (local := self.ports.pod_port(p, target)) is not None]
        self._endpoints = wanted
        for key in set(wanted) - set(self._servers):
            owner, port = key
            self._servers[key] = await asyncio.start_server(self._forwarder(key), LOOPBACK,
                                                            self.ports.port(owner, port))
        for key in set(self._servers) - set(wanted):
            self._servers.pop(key).close()

    async def close(self) -> None:
        for server in self._servers.values():
            server.close()
        self._servers.clear()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    def _forwarder(self, key: tuple[Owner, int]) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                                             Coroutine[Any, Any, None]]:
        """The connection handler of one Service port's listener."""
        return lambda reader, writer: self._forward(key, reader, writer)

    async def _forward(self, key: tuple[Owner, int], reader: asyncio.StreamReader,
                       writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:  # start_server runs each handler as a task
            raise RuntimeError("a Service connection handled outside a task")
        self._pipes.add(task)
        try:
            upstream = await self._connect(key)
            if upstream is None:
                return
            up_reader, up_writer = upstream
            try:
                await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
            finally:
                up_writer.close()
        finally:
            writer.close()
            self._pipes.discard(task)

    async def _connect(self, key: tuple[Owner, int]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        endpoints = self._endpoints.get(key) or []
        start = next(self._turn)
        for i in range(len(endpoints)):
            port = endpoints[(start + i) % len(endpoints)]
            try:
                return await asyncio.open_connection(LOOPBACK, port)
            except OSError:
                continue  # the pod stopped listening since the last sync: try the next one
        log.debug("service %s:%d has no reachable endpoint", *key)
        return None


def _selected(pod: Mapping[str, Any], namespace: str, selector: Mapping[str, str]) -> bool:
    """Ready, not terminating, in the namespace, with every selector label."""
    metadata, status = pod["metadata"], pod.get("status") or {}
    if metadata.get("namespace") != namespace or metadata.get("deletionTimestamp") or not selector:
        return False
    if not selector.items() <= (metadata.get("labels") or {}).items():
        return False
    return condition_true(status, "Ready")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while data := await reader.read(PIPE_CHUNK):
            writer.write(data)
            await writer.drain()
    with contextlib.suppress(OSError, RuntimeError):
        if writer.can_write_eof():
            writer.write_eof()
