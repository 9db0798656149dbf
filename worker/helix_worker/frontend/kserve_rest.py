"""KServe v2 / Open Inference Protocol REST routes on the front end's HTTP server
(what tritonclient.http and perf_analyzer's HTTP client talk to), beside the OpenAI API.

Thin: bodies become `ModelInferRequest`s (`kserve_rest_codec`) for the shared
`KServeDataPlane`. Health, server and model metadata, readiness, configuration, statistics,
infer (JSON or binary tensors), and Triton's generate / generate_stream (server-sent events).
Each model path also answers under `/versions/1`. Errors are `{"error": "..."}` with 400,
404 (unknown model), 503 (no capacity) or 500.
"""

import json
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

from aiohttp import web

from helix_worker.errors import InvalidRequest, ServingError, Unavailable
from helix_worker.frontend import kserve_rest_codec as rest
from helix_worker.frontend.kserve_dataplane import KServeDataPlane, ModelNotFound
from helix_worker.frontend.openai_http import read_body


def add_kserve_routes(app: web.Application, plane: KServeDataPlane, *, body_seconds: float) -> None:
    api = _Rest(plane, body_seconds)
    app.router.add_get("/v2/health/live", api.live)
    app.router.add_get("/v2/health/ready", api.ready)
    app.router.add_get("/v2", api.server_metadata)
    app.router.add_get("/v2/models/stats", api.all_statistics)
    for model in ("/v2/models/{name}", "/v2/models/{name}/versions/{version}"):
        app.router.add_get(model, api.metadata)
        app.router.add_get(model + "/ready", api.model_ready)
        app.router.add_get(model + "/config", api.config)
        app.router.add_get(model + "/stats", api.statistics)
        app.router.add_post(model + "/infer", api.infer)
        app.router.add_post(model + "/generate", api.generate)
        app.router.add_post(model + "/generate_stream", api.generate_stream)


def _error(err: Exception) -> web.Response:
    status = 400 if isinstance(err, InvalidRequest) else 404 if isinstance(err, ModelNotFound) \
        else 503 if isinstance(err, Unavailable) else 500
    return web.json_response({"error": str(err)}, status=status)


def _model(request: web.Request) -> tuple[str, str]:
    return request.match_info["name"], request.match_info.get("version", "")


class _Rest:
    def __init__(self, plane: KServeDataPlane, body_seconds: float) -> None:
        self.plane, self.body_seconds = plane, body_seconds

    async def live(self, _: web.Request) -> web.Response:
        return web.json_response({"live": True})

    async def ready(self, _: web.Request) -> web.Response:
        ready = self.plane.ready()
        return web.json_response({"ready": ready}, status=200 if ready else 503)

    async def server_metadata(self, _: web.Request) -> web.Response:
        return web.json_response(self.plane.server_metadata())

    async def model_ready(self, request: web.Request) -> web.Response:
        try:
            self.plane.check_model(*_model(request))
        except ModelNotFound as err:
            return _error(err)
        ready = self.plane.ready()
        return web.json_response({"name": self.plane.model_name, "ready": ready}, status=200 if ready else 503)

    async def metadata(self, request: web.Request) -> web.Response:
        return self._answer(self.plane.model_metadata, *_model(request))

    async def config(self, request: web.Request) -> web.Response:
        return self._answer(self.plane.model_config, *_model(request))

    async def statistics(self, request: web.Request) -> web.Response:
        return self._answer(self.plane.model_statistics, *_model(request))

    async def all_statistics(self, _: web.Request) -> web.Response:
        return web.json_response(self.plane.model_statistics())

    def _answer(self, method: Callable[..., dict[str, Any]], *args: str) -> web.Response:
        try:
            return web.json_response(method(*args))
        except ServingError as err:
            return _error(err)

    async def infer(self, request: web.Request) -> web.Response:
        try:
            body = await read_body(request, self.body_seconds)
            infer, binary = rest.infer_request(*_model(request), body, request.headers.get(rest.HEADER_LENGTH))
            payload, headers = rest.infer_response(await self.plane.infer(infer), binary)
        except ServingError as err:
            return _error(err)
        return web.Response(body=payload, headers=headers)

    async def generate(self, request: web.Request) -> web.Response:
        try:
            infer = rest.generate_request(*_model(request), await read_body(request, self.body_seconds))
            return web.json_response(rest.generate_response(await self.plane.infer(infer)))
        except ServingError as err:
            return _error(err)

    async def generate_stream(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events, one per token, as Triton's generate_stream sends them; an error
        before the first event is a plain error response, one after it an `error` event."""
        try:
            infer = rest.generate_request(*_model(request), await read_body(request, self.body_seconds))
            self.plane.check_model(infer.model_name, infer.model_version)
        except ServingError as err:
            return _error(err)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            async with aclosing(self.plane.stream(infer)) as answers:
                async for answer in answers:
                    if answer.outputs:  # not the empty final response some clients ask for
                        await _event(response, rest.generate_response(answer))
        except ServingError as err:
            await _event(response, {"error": str(err)})
        await response.write_eof()
        return response


async def _event(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(data).encode() + b"\n\n")
