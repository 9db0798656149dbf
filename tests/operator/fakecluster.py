"""Test conveniences over the local API server (`helix_dev.apiserver`): the operator in the
test's event loop, and `Kubelet`, a stand-in node agent and Deployment controller that only
marks pods and Deployments ready through the API, so the operator sees watch events as it
would in a cluster. (`helix_dev` has the real node agent that runs pods as processes.)
"""

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

import kmock

from helix_dev.apiserver import ApiServer, api_server, resource_infos  # noqa: F401 (re-exported for tests, bench)
from helix_dev.inprocess import operator_in_process
from helix_operator.control.context import OperatorContext
from helix_operator.control.runtime import RunOptions

T = TypeVar("T")


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
    async with operator_in_process(api, options) as context:
        yield Harness(api, context)
