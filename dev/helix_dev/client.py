"""A small async client for the local API server, used by the stand-in cluster agents."""

from collections.abc import Mapping
from typing import Any

import aiohttp

MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


def path_of(api_version: str, plural: str, namespace: str | None = None, name: str | None = None,
            subresource: str | None = None) -> str:
    root = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    parts = [root] + ([f"namespaces/{namespace}"] if namespace else []) + [plural]
    parts += [name] if name else []
    parts += [subresource] if subresource else []
    return "/".join(parts)


def pod_path(pod: Mapping[str, Any], subresource: str | None = None) -> str:
    metadata = pod["metadata"]
    return path_of("v1", "pods", metadata["namespace"], metadata["name"], subresource)


class Api:
    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> Any:
        async with self.session.request(method, self.url + path, json=body, headers=headers) as response:
            data = await response.json(content_type=None) if response.content_length != 0 else None
            if response.status >= 400:
                message = (data or {}).get("message", "") if isinstance(data, dict) else str(data)
                raise ApiError(response.status, f"{method} {path}: {message}")
            return data

    async def get(self, path: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self.call("GET", path)
            return found
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def list(self, path: str) -> list[dict[str, Any]]:
        return list((await self.call("GET", path) or {}).get("items") or [])

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self.call("POST", path, body)
        return created

    async def patch(self, path: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Merge-patch; None if the object is gone."""
        try:
            patched: dict[str, Any] = await self.call("PATCH", path, body, MERGE_PATCH)
            return patched
        except ApiError as err:
            if err.status == 404:
                return None
            raise

    async def delete(self, path: str, grace_seconds: int | None = None) -> bool:
        """False if it was already gone."""
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1", "propagationPolicy": "Background"}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        try:
            await self.call("DELETE", path, body)
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return True
