"""API keys at the front end's client endpoints (see `security.apikeys`): an aiohttp
middleware answering 401 with OpenAI's error body (OpenAI and KServe REST alike), and a gRPC
interceptor answering UNAUTHENTICATED. Health, readiness (the front end's and KServe's live,
ready and model-ready calls), metrics and observed capacity stay open for probes, scrapers and
the operator."""

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from aiohttp import web
from aiohttp.typedefs import Middleware

from helix_planner.observed import PATH as OBSERVED_PATH
from helix_worker.security.apikeys import ApiKeys

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/v2/health/live", "/v2/health/ready", OBSERVED_PATH})
OPEN_METHODS = frozenset(f"/inference.GRPCInferenceService/{m}" for m in ("ServerLive", "ServerReady", "ModelReady"))
MESSAGE = "a valid API key is required: send `Authorization: Bearer <key>`"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def require_key_middleware(keys: ApiKeys) -> Middleware:
    @web.middleware
    async def require_key(request: web.Request, handler: Handler) -> web.StreamResponse:
        if _open(request.path) or keys.allows(request.headers.get("Authorization")):
            return await handler(request)
        return web.json_response({"error": {"message": MESSAGE, "type": "invalid_request_error",
                                            "code": "invalid_api_key"}},
                                 status=401, headers={"WWW-Authenticate": "Bearer"})
    return require_key


def _open(path: str) -> bool:
    """Health and readiness: /v2/models/{name}[/versions/{v}]/ready is KServe's ModelReady."""
    return path in OPEN_PATHS or (path.startswith("/v2/models/") and path.endswith("/ready"))


class RequireKey(grpc.aio.ServerInterceptor):
    """Calls other than the health methods need `authorization: Bearer <key>` metadata."""

    def __init__(self, keys: ApiKeys) -> None:
        self.keys = keys

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or details.method in OPEN_METHODS:
            return handler
        presented = dict(details.invocation_metadata or ()).get("authorization")
        if self.keys.allows(presented if isinstance(presented, str) else None):
            return handler

        async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, MESSAGE)

        kind = ("unary_unary" if handler.unary_unary else "unary_stream" if handler.unary_stream else
                "stream_unary" if handler.stream_unary else "stream_stream")
        return handler._replace(**{kind: refuse})
