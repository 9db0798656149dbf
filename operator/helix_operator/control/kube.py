"""The operator's writes and reads of child objects: a thin async adapter over the official
client's REST layer, working on plain dicts (the builders' output) and run in threads so
that the event loop never blocks on the network.

kopf itself watches and patches with its own client; this one only touches children and
the status subresource.
"""

import asyncio
import json
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client import ApiClient, Configuration

from helix_operator.api.names import FIELD_MANAGER

MERGE_PATCH = "application/merge-patch+json"
TIMEOUT = 30
PARALLEL = 8


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass(frozen=True)
class Ref:
    """Where an object lives: apiVersion, plural, namespace (None if cluster-scoped), name."""

    api_version: str
    plural: str
    namespace: str | None
    name: str | None = None

    @property
    def path(self) -> str:
        root = "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"
        scope = f"/namespaces/{self.namespace}" if self.namespace else ""
        return f"{root}{scope}/{self.plural}" + (f"/{self.name}" if self.name else "")


PLURALS = {"Pod": "pods", "ConfigMap": "configmaps", "Service": "services", "Deployment": "deployments",
           "Event": "events", "Node": "nodes", "NetworkPolicy": "networkpolicies", "Secret": "secrets"}


def ref_of(obj: Mapping[str, Any]) -> Ref:
    metadata = obj["metadata"]
    return Ref(obj["apiVersion"], PLURALS[obj["kind"]], metadata.get("namespace"), metadata["name"])


class Kube:
    """Create, read, merge-patch, delete and list objects as dicts."""

    def __init__(self, configuration: Configuration) -> None:
        self._api = ApiClient(configuration)

    def close(self) -> None:
        self._api.close()

    async def get(self, ref: Ref) -> dict[str, Any] | None:
        try:
            return await self._call("GET", ref.path)
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def list_objects(self, ref: Ref, labels: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """Items whose labels include `labels` (checked here too: not every API server filters)."""
        query = [("labelSelector", ",".join(f"{k}={v}" for k, v in labels.items()))] if labels else []
        items = (await self._call("GET", ref.path, query=query)).get("items") or []
        wanted = dict(labels or {})
        return [i for i in items if wanted.items() <= ((i.get("metadata") or {}).get("labels") or {}).items()]

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        ref = ref_of(obj)
        return await self._call("POST", Ref(ref.api_version, ref.plural, ref.namespace).path, body=dict(obj),
                                query=[("fieldManager", FIELD_MANAGER)])

    async def patch(self, ref: Ref, patch: Mapping[str, Any], subresource: str | None = None) -> dict[str, Any]:
        path = ref.path + (f"/{subresource}" if subresource else "")
        return await self._call("PATCH", path, body=dict(patch), content_type=MERGE_PATCH,
                                query=[("fieldManager", FIELD_MANAGER)])

    async def delete(self, ref: Ref, grace_seconds: int | None = None) -> bool:
        """False if it was already gone."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            await self._call("DELETE", ref.path, body=body)
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return True

    async def create_missing(self, obj: Mapping[str, Any]) -> None:
        """Create `obj`; one that already exists is left alone."""
        try:
            await self.create(obj)
        except ApiError as err:
            if err.status != 409:
                raise

    async def ensure(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        """Create `obj`, or merge-patch the live one where it differs from `obj`; return the live one."""
        live = await self.get(ref_of(obj))
        if live is None:
            try:
                return await self.create(obj)
            except ApiError as err:
                if err.status != 409:
                    raise
                live = await self.get(ref_of(obj)) or {}
        wanted = {k: v for k, v in obj.items() if k in ("metadata", "spec", "data")}
        if _contains(live, wanted):
            return live
        return await self.patch(ref_of(obj), wanted)

    async def _call(self, method: str, path: str, *, query: list[tuple[str, str]] | None = None,
                    body: Any = None, content_type: str | None = None) -> dict[str, Any]:
        return await asyncio.to_thread(self._request, method, path, query or [], body, content_type)

    def _request(self, method: str, path: str, query: list[tuple[str, str]], body: Any,
                 content_type: str | None) -> dict[str, Any]:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type or "application/json"
        serialized = self._api.param_serialize(method=method, resource_path=path, query_params=query,
                                               header_params=headers, body=body, auth_settings=["BearerToken"])
        response = self._api.call_api(*serialized, _request_timeout=TIMEOUT)
        data = response.read()
        if response.status >= 400:
            try:
                message = json.loads(data).get("message", "")
            except (ValueError, AttributeError):
                message = data.decode(errors="replace")[:500] if data else ""
            raise ApiError(response.status, f"{method} {path}: {message}")
        return json.loads(data) if data else {}


async def each(calls: Iterable[Awaitable[Any]], limit: int = PARALLEL) -> None:
    """Await `calls` with at most `limit` in flight (pods of a rollout step, for example)."""
    gate = asyncio.Semaphore(limit)

    async def one(call: Awaitable[Any]) -> None:
        async with gate:
            await call

    await asyncio.gather(*(one(call) for call in calls))


def _contains(live: Any, wanted: Any) -> bool:
    """Whether every field of `wanted` is in `live` with the same value (server defaults ignored)."""
    if isinstance(wanted, Mapping):
        return isinstance(live, Mapping) and all(k in live and _contains(live[k], v) for k, v in wanted.items())
    if isinstance(wanted, list):
        return isinstance(live, list) and len(live) == len(wanted) and all(map(_contains, live, wanted))
    return bool(live == wanted)
