"""KServe v2 / Open Inference Protocol gRPC adapter (what tritonclient.grpc talks to).

Thin: it converts messages with `kserve_codec` and calls the `GenerationService`.
ModelInfer returns the whole completion; ModelStreamInfer sends one response per token
(Triton's decoupled style, `triton_final_response` marking the last) and serves several
requests on one stream concurrently. Errors map to status codes (INVALID_ARGUMENT,
UNAVAILABLE, NOT_FOUND), or to `error_message` on the stream.
"""

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc

from helix_proto import grpc_service_pb2 as kserve
from helix_proto import grpc_service_pb2_grpc as kserve_grpc
from helix_worker.errors import InvalidRequest, ServingError, Unavailable
from helix_worker.frontend import kserve_codec as codec
from helix_worker.frontend.service import GenerationService

log = logging.getLogger(__name__)
SERVER_NAME = "helix"
SERVER_VERSION = "0.1.0"


def status_of(err: Exception) -> grpc.StatusCode:
    if isinstance(err, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(err, Unavailable):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


class KServeServicer(kserve_grpc.GRPCInferenceServiceServicer):
    def __init__(self, service: GenerationService) -> None:
        self.service = service

    async def ServerLive(self, request, context):  # noqa: N802 (gRPC method names)
        return kserve.ServerLiveResponse(live=True)

    async def ServerReady(self, request, context):  # noqa: N802
        return kserve.ServerReadyResponse(ready=self.service.coordinator.ready)

    async def ServerMetadata(self, request, context):  # noqa: N802
        return kserve.ServerMetadataResponse(name=SERVER_NAME, version=SERVER_VERSION, extensions=[])

    async def ModelReady(self, request, context):  # noqa: N802
        return kserve.ModelReadyResponse(ready=request.name == self.service.model_name and self.service.coordinator.ready)

    async def ModelMetadata(self, request, context):  # noqa: N802
        await self._check_model(request.name, context)
        tensor = kserve.ModelMetadataResponse.TensorMetadata
        return kserve.ModelMetadataResponse(
            name=self.service.model_name, versions=["1"], platform="helix",
            inputs=[tensor(name=n, datatype=d, shape=s) for n, (d, s) in codec.INPUTS.items()],
            outputs=[tensor(name=n, datatype=d, shape=s) for n, (d, s) in codec.OUTPUTS.items()])

    async def ModelInfer(self, request, context):  # noqa: N802
        await self._check_model(request.model_name, context)
        try:
            text, _ = codec.text_request(request)
            names = codec.requested_outputs(request)
            done = await self.service.complete(text)
        except ServingError as err:
            await context.abort(status_of(err), str(err))
        except Exception as err:  # a bug: one clear status instead of gRPC's UNKNOWN
            log.exception("ModelInfer %s failed", request.id)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {err!r}")
        return codec.response(request, self.service.model_name, names, text=done.text, token_ids=done.token_ids,
                              finish=done.finish_reason, logprobs=done.logprobs)

    async def ModelStreamInfer(self, request_iterator, context) -> AsyncIterator[kserve.ModelStreamInferResponse]:  # noqa: N802
        out: asyncio.Queue = asyncio.Queue()
        done = object()
        tasks: set[asyncio.Task] = set()
        pending = 1  # the reader, plus one per request being generated

        async def read() -> None:
            nonlocal pending
            try:
                async for request in request_iterator:
                    pending += 1
                    task = asyncio.create_task(self._stream_one(request, out, done))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
            finally:
                out.put_nowait(done)

        reader = asyncio.create_task(read())
        try:
            while pending:
                item = await out.get()
                if item is done:
                    pending -= 1
                else:
                    yield item
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()

    async def _stream_one(self, request: kserve.ModelInferRequest, out: asyncio.Queue, done: object) -> None:
        try:
            if request.model_name != self.service.model_name:
                raise InvalidRequest(f"unknown model {request.model_name!r}; this server serves {self.service.model_name!r}")
            text, empty_final = codec.text_request(request)
            names = codec.requested_outputs(request)
            generation = await self.service.prepare(text)
            async with aclosing(self.service.stream(text, generation)) as pieces:
                async for piece in pieces:
                    last = piece.finish_reason is not None
                    out.put_nowait(kserve.ModelStreamInferResponse(infer_response=codec.response(
                        request, self.service.model_name, names, text=piece.text, token_ids=piece.token_ids,
                        finish=piece.finish_reason, logprobs=piece.logprobs, final=last and not empty_final)))
            if empty_final:
                final = kserve.ModelInferResponse(model_name=self.service.model_name, model_version="1", id=request.id)
                final.parameters["triton_final_response"].bool_param = True
                out.put_nowait(kserve.ModelStreamInferResponse(infer_response=final))
        except ServingError as err:
            out.put_nowait(kserve.ModelStreamInferResponse(
                error_message=str(err), infer_response=kserve.ModelInferResponse(id=request.id)))
        except Exception as err:  # never let one request kill the stream of the others
            log.exception("stream request %s failed", request.id)
            out.put_nowait(kserve.ModelStreamInferResponse(
                error_message=f"internal error: {err!r}", infer_response=kserve.ModelInferResponse(id=request.id)))
        finally:
            out.put_nowait(done)

    async def _check_model(self, name: str, context: grpc.aio.ServicerContext) -> None:
        if name != self.service.model_name:
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"unknown model {name!r}; this server serves {self.service.model_name!r}")
