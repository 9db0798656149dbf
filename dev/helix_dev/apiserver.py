"""kmock's Kubernetes emulator plus the API-server behaviours the operator relies on.

kmock stores objects and streams watch events; this subclass adds what a real control plane
does around that: names from `generateName`, uids, resourceVersions and timestamps on
create, `metadata.generation` bumped on spec changes, `status.phase: Pending` on new pods,
graceful deletion of pods bound to a node (the pod stays, Terminating, until its node agent
has stopped it and deletes it with grace period 0), and the garbage collector (objects whose
every owner is gone are deleted: kmock has none). It keeps no request log.
"""

import contextlib
import datetime
import uuid
from collections.abc import AsyncIterator
from typing import Any

import kmock
from aiohttp import web
from kmock import action

from helix_operator.api import crd

PODS = kmock.resource("v1/pods")
DEFAULT_GRACE_SECONDS = 30


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


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class ApiServer(kmock.KubernetesEmulator):
    async def _handle(self, request: kmock.Request) -> Any:
        if request.resource is not None:
            if request.action == action.CREATE and isinstance(request.data, dict):
                self._on_create(request.resource, request.data)
            elif request.action == action.UPDATE and isinstance(request.data, dict) and not request.subresource:
                self._on_update(request)
        try:
            if request.action == action.DELETE and request.resource == PODS and request.name:
                response = await self._delete_pod(request)
                if response is not None:
                    return response
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
    def _on_create(resource: Any, data: dict[str, Any]) -> None:
        meta = data.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("resourceVersion", "1")
        meta.setdefault("generation", 1)
        meta.setdefault("creationTimestamp", _now())
        if resource == PODS:
            data.setdefault("status", {}).setdefault("phase", "Pending")

    def _on_update(self, request: kmock.Request) -> None:
        if request.resource is None or request.name is None:  # not an object's URL: kmock answers it
            return
        key = (request.resource, request.namespace, request.name)
        if "spec" in request.data and key in self.objects and not self.objects[key].deleted:
            generation = self.objects[key].get("metadata", {}).get("generation", 1)
            request.data.setdefault("metadata", {})["generation"] = generation + 1

    async def _delete_pod(self, request: kmock.Request) -> web.Response | None:
        """Graceful deletion of a pod bound to a node; None leaves the request to kmock (immediate)."""
        resource = request.resource
        if resource is None or request.name is None:
            return None
        key = (resource, request.namespace, request.name)
        async with self._lock:
            if key not in self.objects or self.objects[key].deleted:
                return None
            obj = self.objects[key]
            raw = obj.raw
            if not (raw.get("spec") or {}).get("nodeName"):
                return None
            options = request.data if isinstance(request.data, dict) else {}
            grace = options.get("gracePeriodSeconds")
            if grace is None:
                grace = (raw.get("spec") or {}).get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
            if int(grace) <= 0:
                obj.delete()
                await self._buses[resource].put({"type": "DELETED", "object": raw})
                return web.json_response(raw)
            if not raw["metadata"].get("deletionTimestamp"):
                obj.patch({"metadata": {"deletionTimestamp": _now(), "deletionGracePeriodSeconds": int(grace)}})
                await self._buses[resource].put({"type": "MODIFIED", "object": obj.raw})
            return web.json_response(obj.raw)

    async def _collect_garbage(self) -> None:
        """Delete (with a watch event) every object whose owners are all gone, until none is left;
        pods bound to a node are deleted gracefully (their node agent finishes the deletion)."""
        while True:
            changed = False
            async with self._lock:
                live = {obj.get("metadata", {}).get("uid") for obj in self.objects.values() if not obj.deleted}
                orphans = [(key, obj) for key, obj in self.objects.items() if not obj.deleted
                           and (refs := obj.get("metadata", {}).get("ownerReferences"))
                           and not any(ref.get("uid") in live for ref in refs)]
                for (resource, _, _), obj in orphans:
                    raw = obj.raw
                    if resource == PODS and (raw.get("spec") or {}).get("nodeName"):
                        if raw["metadata"].get("deletionTimestamp"):
                            continue
                        grace = (raw.get("spec") or {}).get("terminationGracePeriodSeconds", DEFAULT_GRACE_SECONDS)
                        obj.patch({"metadata": {"deletionTimestamp": _now(), "deletionGracePeriodSeconds": grace}})
                        await self._buses[resource].put({"type": "MODIFIED", "object": obj.raw})
                    else:
                        obj.delete()
                        await self._buses[resource].put({"type": "DELETED", "object": raw})
                        changed = True
            if not changed:
                return


@contextlib.asynccontextmanager
async def api_server() -> AsyncIterator[ApiServer]:
    """An API server on a local port that knows the built-in resources and our CRDs."""
    server = ApiServer()
    server.resources.load_bundled()
    for key, info in resource_infos().items():
        server.resources[key] = info
    async with server, kmock.Server(server):
        yield server
