"""KServe v2 / Open Inference Protocol gRPC adapter (what tritonclient.grpc and perf_analyzer talk to).

Thin: every call goes to the `KServeDataPlane`, which the REST routes share. ModelInfer
returns the whole completion of each prompt; ModelStreamInfer answers each request with a
response per token (Triton's decoupled style, `triton_final_response` marking the last) and
serves several requests on one stream concurrently. Errors map to status codes
(INVALID_ARGUMENT, UNAVAILABLE, NOT_FOUND), or to `error_message` on the stream.
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import grpc
from google.protobuf import json_format

from helix_proto import grpc_service_pb2 as kserve
from helix_proto import grpc_service_pb2_grpc as kserve_grpc
from helix_worker.errors import InvalidRequest, ServingError, Unavailable
from helix_worker.frontend.kserve_dataplane import KServeDataPlane, ModelNotFound

log = logging.getLogger(__name__)
Context = grpc.aio.ServicerContext[Any, Any]


def status_of(err: Exception) -> grpc.StatusCode:
    if isinstance(err, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(err, ModelNotFound):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(err, Unavailable):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


class KServeServicer(kserve_grpc.GRPCInferenceServiceServicer):
    def __init__(self, plane: KServeDataPlane) -> None:
        self.plane = plane

    async def ServerLive(self, request: kserve.ServerLiveRequest, context: Context) -> kserve.ServerLiveResponse:
        return kserve.ServerLiveResponse(live=True)

    async def ServerReady(self, request: kserve.ServerReadyRequest, context: Context) -> kserve.ServerReadyResponse:
        return kserve.ServerReadyResponse(ready=self.plane.ready())

    async def ServerMetadata(self, request: kserve.ServerMetadataRequest,
                             context: Context) -> kserve.ServerMetadataResponse:
        return json_format.ParseDict(self.plane.server_metadata(), kserve.ServerMetadataResponse())

    async def ModelReady(self, request: kserve.ModelReadyRequest, context: Context) -> kserve.ModelReadyResponse:
        return kserve.ModelReadyResponse(ready=self.plane.model_ready(request.name))

    async def ModelMetadata(self, request: kserve.ModelMetadataRequest,
                            context: Context) -> kserve.ModelMetadataResponse:
        metadata = await self._call(context, self.plane.model_metadata, request.name, request.version)
        return json_format.ParseDict(metadata, kserve.ModelMetadataResponse())

    async def ModelConfig(self, request: kserve.ModelConfigRequest, context: Context) -> kserve.ModelConfigResponse:
        config = await self._call(context, self.plane.model_config, request.name, request.version)
        return kserve.ModelConfigResponse(config=json_format.ParseDict(config, kserve.ModelConfig()))

    async def ModelStatistics(self, request: kserve.ModelStatisticsRequest,
                              context: Context) -> kserve.ModelStatisticsResponse:
        stats = await self._call(context, self.plane.model_statistics, request.name, request.version)
        return json_format.ParseDict(stats, kserve.ModelStatisticsResponse())

    async def ModelInfer(self, request: kserve.ModelInferRequest, context: Context) -> kserve.ModelInferResponse:
        try:
            return await self.plane.infer(request)
        except ServingError as err:
            await context.abort(status_of(err), str(err))
        except Exception as err:  # a bug: one clear status instead of gRPC's UNKNOWN
            log.exception("ModelInfer %s failed", request.id)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {err!r}")

    async def ModelStreamInfer(self, request_iterator: AsyncIterator[kserve.ModelInferRequest],
                               context: Context) -> AsyncIterator[kserve.ModelStreamInferResponse]:
        out: asyncio.Queue[kserve.ModelStreamInferResponse | None] = asyncio.Queue()  # None: one producer is done
        tasks: set[asyncio.Task[None]] = set()
        pending = 1  # the reader, plus one per request being generated

        async def read() -> None:
            nonlocal pending
            try:
                async for request in request_iterator:
                    pending += 1
                    task = asyncio.create_task(self._stream_one(request, out))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            finally:
                out.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while pending:
                item = await out.get()
                if item is None:
                    pending -= 1
                else:
                    yield item
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _stream_one(self, request: kserve.ModelInferRequest,
                          out: asyncio.Queue[kserve.ModelStreamInferResponse | None]) -> None:
        try:
            async with aclosing(self.plane.stream(request)) as responses:
                async for response in responses:
                    out.put_nowait(kserve.ModelStreamInferResponse(infer_response=response))
        except ServingError as err:
            out.put_nowait(kserve.ModelStreamInferResponse(
                error_message=str(err), infer_response=kserve.ModelInferResponse(id=request.id)))
        except Exception as err:  # never let one request kill the stream of the others
            log.exception("stream request %s failed", request.id)
            out.put_nowait(kserve.ModelStreamInferResponse(
                error_message=f"internal error: {err!r}", infer_response=kserve.ModelInferResponse(id=request.id)))
        finally:
            out.put_nowait(None)

    async def _call(self, context: Context, method: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
        try:
            return method(*args)
        except ServingError as err:
            await context.abort(status_of(err), str(err))
