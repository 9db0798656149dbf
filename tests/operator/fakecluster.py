"""kmock's Kubernetes emulator plus the API-server behaviours the operator relies on.

kmock stores objects and streams watch events; this subclass adds what a real control plane
does around that: names from `generateName`, uids, resourceVersions and timestamps on
create, `metadata.generation` bumped on spec changes, and the garbage collector (objects
whose every owner is gone are deleted: kmock has none). It keeps no request log. `Kubelet` plays node agent and
Deployment controller: it marks pods and Deployments ready through the API, so the
operator sees watch events as it would in a cluster.
"""

import asyncio
import contextlib
import datetime
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import kmock
import kopf
from kmock import action
from kubernetes.client import Configuration

from helix_operator import crd
from helix_operator.context import OperatorContext
from helix_operator.runtime import RunOptions, start

T = TypeVar("T")


def resource_infos() -> dict[str, kmock.ResourceInfo]:
    """Discovery entries for the CRDs, read from the CRD definitions themselves."""
    infos = {}
    for documents in crd.all_crds().values():
        for definition in documents:
            spec = definition["spec"]
            for version in spec["versions"]:
                key = f"{spec['group']}/{version['name']}/{spec['names']['plural']}"
                infos[key] = kmock.ResourceInfo(
                    kind=spec["names"]["kind"], namespaced=spec["scope"] == "Namespaced",
                    shortnames=set(spec["names"].get("shortNames", [])),
                    subresources=set(version.get("subresources", {})),
                    verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
                )
    return infos


class ApiServer(kmock.KubernetesEmulator):
    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None:
            if request.action == action.CREATE and isinstance(request.data, dict):
                self._on_create(request.data)
            elif request.action == action.UPDATE and isinstance(request.data, dict) and not request.subresource:
                self._on_update(request)
        try:
            return await super()._handle(request)
        finally:
            if request.action == action.DELETE or (request.action == action.UPDATE and request.subresource is None):
                await self._collect_garbage()
            self._forget(request)

    def _forget(self, request: kmock.Request) -> None:
        """Drop a served request from kmock's log: kmock matches each request against the whole
        log (quadratic), and these tests assert on objects and events, not on requests."""
        for index, seen in enumerate(self._requests):
            if seen is request:
                del self._requests[index]
                return

    @staticmethod
    def _on_create(data: dict[str, Any]) -> None:
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("resourceVersion", "1")
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def _on_update(self, request: kmock.Request) -> None:
        key = (request.resource, request.namespace, request.name)
        if "spec" in request.data and key in self.objects and not self.objects[key].deleted:
            generation = self.objects[key].get("metadata", {}).get("generation", 1)
            request.data.setdefault("metadata", {})["generation"] = generation + 1

    async def _collect_garbage(self) -> None:
        """Delete (with a watch event) every object whose owners are all gone, until none is left."""
        while True:
            async with self._lock:
                live = {obj.get("metadata", {}).get("uid") for obj in self.objects.values() if not obj.deleted}
                orphans = [(key, obj) for key, obj in self.objects.items() if not obj.deleted
                           and (refs := obj.get("metadata", {}).get("ownerReferences"))
                           and not any(ref.get("uid") in live for ref in refs)]
                for (resource, _, _), obj in orphans:
                    raw = obj.raw
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})
            if not orphans:
                return


class Kubelet:
    """Marks pods Running+Ready and Deployments available, through the API like the real agents."""

    def __init__(self, api: ApiServer) -> None:
        self.api = api

    async def sync(self) -> None:
        for (resource, namespace, name), obj in list(self.api.objects.items()):
            if obj.deleted or obj.get("metadata", {}).get("deletionTimestamp"):
                continue
            if resource == "v1/pods" and not _pod_ready(obj):
                status = {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
                await self._patch(f"/api/v1/namespaces/{namespace}/pods/{name}/status", {"status": status})
            if resource == "apps/v1/deployments":
                want = obj.get("spec", {}).get("replicas", 1)
                if obj.get("status", {}).get("readyReplicas") != want:
                    status = {"replicas": want, "readyReplicas": want, "updatedReplicas": want,
                              "availableReplicas": want}
                    await self._patch(f"/apis/apps/v1/namespaces/{namespace}/deployments/{name}/status",
                                      {"status": status})

    async def _patch(self, path: str, body: dict[str, Any]) -> None:
        async with self.api.patch(path, json=body, headers={"Content-Type": "application/merge-patch+json"}) as resp:
            resp.raise_for_status()


def _pod_ready(obj: Any) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in obj.get("status", {}).get("conditions", []) or [])


@contextlib.asynccontextmanager
async def api_server() -> AsyncIterator[ApiServer]:
    """An API server on a local port that knows the built-in resources and our CRDs."""
    server = ApiServer()
    server.resources.load_bundled()
    for key, info in resource_infos().items():
        server.resources[key] = info
    async with server, kmock.Server(server):
        yield server


class Harness:
    """The running operator, its API server and a fake kubelet, with test conveniences."""

    def __init__(self, api: ApiServer, context: OperatorContext | None) -> None:
        """`context` is the in-process operator's (None when it runs elsewhere, as in the benchmark)."""
        self.api = api
        self.context = context
        self.kubelet = Kubelet(api)

    def live(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return [obj.raw for (res, ns, _), obj in self.api.objects.items()
                if res == resource and not obj.deleted and (namespace is None or ns == namespace)]

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        key = (kmock.resource(resource), namespace, name)
        return None if key not in self.api.objects or self.api.objects[key].deleted else self.api.objects[key].raw

    def events(self, namespace: str, name: str) -> list[tuple[str, str]]:
        return [(e["type"], e["reason"]) for e in self.live("v1/events", namespace)
                if e.get("involvedObject", {}).get("name") == name]

    async def request(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/merge-patch+json"} if method == "patch" else {}
        async with self.api.request(method, path, json=body, headers=headers) as response:
            response.raise_for_status()
            return await response.json()

    async def eventually(self, check: Callable[[], T], timeout: float = 30.0, *,
                         explain: Callable[[], Any] | None = None) -> T:
        """Poll `check` (running the fake kubelet in between) until it returns something truthy;
        on timeout the error shows `explain()` (the status, say)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            await self.kubelet.sync()
            value = check()
            if value:
                return value
            if asyncio.get_running_loop().time() > deadline:
                detail = f"; {explain()}" if explain else ""
                raise AssertionError(f"not within {timeout}s: {check.__doc__ or check}{detail}")
            await asyncio.sleep(0.1)



@contextlib.asynccontextmanager
async def running_operator(api: ApiServer, options: RunOptions = RunOptions(resync_seconds=30)
                           ) -> AsyncIterator[Harness]:
    """The operator in this event loop, logged in to `api`; stopped and awaited on exit."""
    url = str(api.servers[0].url).rstrip("/")

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True)

    stop, ready = asyncio.Event(), asyncio.Event()
    started = await start(options, Configuration(host=url), login=login, stop_flag=stop, ready_flag=ready)
    try:
        await asyncio.wait_for(ready.wait(), 15)
        yield Harness(api, started.context)
    finally:
        stop.set()
        async with asyncio.timeout(20):  # not wait_for: that would run finish() in another task
            await started.finish()
