"""Undecodable gRPC requests answered with INVALID_ARGUMENT.

grpcio answers a message its deserializer cannot parse with UNKNOWN, a server-side status,
although the client sent the bad bytes. This interceptor lets the deserializer hand over a
marker instead, and the handler wrapper turns it into INVALID_ARGUMENT: at once for a unary
call, and for a stream once the requests before the bad message have been answered.
"""

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError


@dataclass(frozen=True)
class _Undecodable:
    message: str


class RefuseUndecodable(grpc.aio.ServerInterceptor):
    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        decode = handler.request_deserializer

        def deserialize(raw: bytes) -> Any:
            try:
                return decode(raw)
            except DecodeError as err:
                return _Undecodable(f"the request is not a valid protobuf message: {err}")

        if handler.unary_unary is not None:
            return handler._replace(request_deserializer=deserialize, unary_unary=_unary(handler.unary_unary))
        if handler.stream_stream is not None:
            return handler._replace(request_deserializer=deserialize, stream_stream=_stream(handler.stream_stream))
        return handler  # this server has no other kinds of method


def _unary(behaviour: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, request.message)
        return await behaviour(request, context)
    return call


def _stream(behaviour: Callable[..., AsyncIterator[Any]]) -> Callable[..., AsyncIterator[Any]]:
    async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        bad: list[str] = []

        async def until_bad() -> AsyncIterator[Any]:
            async for request in requests:
                if isinstance(request, _Undecodable):
                    bad.append(request.message)
                    return
                yield request

        async for response in behaviour(until_bad(), context):
            yield response
        if bad:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad[0])
    return call
