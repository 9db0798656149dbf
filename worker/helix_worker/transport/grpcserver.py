"""gRPC servers with the limits every Helix server keeps: a stage's, and the front end's KServe port.

* Keepalive: the server pings each client every `SERVER_KEEPALIVE_SECONDS`, even without
  calls, and drops a connection whose ping has no answer within `SERVER_KEEPALIVE_TIMEOUT`: a
  client that is gone, or that stopped reading its socket (a slow reader holding the server's
  buffered answers), is cut off there. A stage's KV lease counts from that moment.
* Ping policy: on a stage port clients may ping every `STAGE_PING_SECONDS` (links ping every
  HELIX_HEARTBEAT_SECONDS, at least 0.1 s, whatever the stage's own setting; see
  `links.Keepalive`; only cluster members get that far), on the KServe port every
  `SERVER_KEEPALIVE_SECONDS` / 2; a client that pings faster without data between gets GOAWAY
  too_many_pings after two strikes (gRPC's ping-flood defence).
* Handshakes: a connection that has not finished its TLS and HTTP/2 handshake within
  `HANDSHAKE_SECONDS` is closed (the data channel's listener keeps the same bound).
* Idle connections: closed after HELIX_GRPC_IDLE_SECONDS without a call (GOAWAY; a client
  reconnects when it calls again). An open stream is a call, so links are never idle.
* Unary calls: each must have received its request and sent its answer within
  HELIX_GRPC_UNARY_SECONDS, else DEADLINE_EXCEEDED (`UnaryDeadline`).
* Connection age, on the KServe port only: HELIX_GRPC_MAX_CONNECTION_AGE_SECONDS, with
  HELIX_DRAIN_SECONDS of grace for the calls in flight.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import grpc

from helix_worker.envs import Settings, env_name
from helix_worker.security.tls import HANDSHAKE_SECONDS
from helix_worker.transport.links import milliseconds

SERVER_KEEPALIVE_SECONDS = 10.0
SERVER_KEEPALIVE_TIMEOUT = 5.0
STAGE_PING_SECONDS = 0.05  # half the shortest HELIX_HEARTBEAT_SECONDS (envs)


def server_options(settings: Settings, *, clients: bool = False,
                   max_receive_bytes: int | None = None) -> list[tuple[str, int]]:
    """Channel arguments of a stage server, or with `clients` of the front end's KServe server.
    `max_receive_bytes` caps what clients send when that is less than what the server sends."""
    ping_every = SERVER_KEEPALIVE_SECONDS / 2 if clients else STAGE_PING_SECONDS
    options = [
        ("grpc.max_send_message_length", settings.max_message_bytes),
        ("grpc.max_receive_message_length", settings.max_message_bytes if max_receive_bytes is None
         else max_receive_bytes),
        ("grpc.keepalive_time_ms", milliseconds(SERVER_KEEPALIVE_SECONDS)),
        ("grpc.keepalive_timeout_ms", milliseconds(SERVER_KEEPALIVE_TIMEOUT)),
        # what really ends a connection whose ping goes unanswered (see links.channel_options)
        ("grpc.http2.ping_timeout_ms", milliseconds(SERVER_KEEPALIVE_TIMEOUT)),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),
        # gRPC servers by default allow one ping without data per 5 minutes and answer the third
        # early one with GOAWAY too_many_pings, which broke every idle stream after ~30 seconds.
        ("grpc.http2.min_ping_interval_without_data_ms", milliseconds(ping_every)),
        ("grpc.http2.min_time_between_pings_ms", milliseconds(ping_every)),
        ("grpc.http2.max_ping_strikes", 2),
        ("grpc.server_handshake_timeout_ms", milliseconds(HANDSHAKE_SECONDS)),
    ]
    if settings.grpc_idle_seconds > 0:
        options.append(("grpc.max_connection_idle_ms", milliseconds(settings.grpc_idle_seconds)))
    if clients and settings.grpc_max_connection_age_seconds > 0:
        options += [("grpc.max_connection_age_ms", milliseconds(settings.grpc_max_connection_age_seconds)),
                    ("grpc.max_connection_age_grace_ms", milliseconds(settings.drain_seconds))]
    return options


def new_server(settings: Settings, *, clients: bool = False, interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
               max_receive_bytes: int | None = None) -> grpc.aio.Server:
    """A server with `server_options` whose unary calls keep HELIX_GRPC_UNARY_SECONDS."""
    return grpc.aio.server(interceptors=[UnaryDeadline(settings.grpc_unary_seconds), *interceptors],
                           options=server_options(settings, clients=clients, max_receive_bytes=max_receive_bytes))


class UnaryDeadline(grpc.aio.ServerInterceptor):
    """Every unary call ends within `seconds` of its start, the wait for its request included.

    grpcio reads a unary call's request before any interceptor's handler runs and waits for it
    without limit, so a deadline around the handler would not bound a client that sends its
    request slowly or never. Served as a client stream of one message (which is what a unary
    request is on the wire), the wait for the request is part of the call, under the deadline.
    It must come first among a server's interceptors: it wraps the handler the others made.
    """

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    async def intercept_service(self, continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None or self.seconds <= 0:
            return handler
        behaviour, seconds = handler.unary_unary, self.seconds

        async def call(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                async with asyncio.timeout(seconds):
                    request = await anext(requests, None)
                    if request is None:
                        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the call carried no request message")
                    return await behaviour(request, context)
            except TimeoutError:
                await context.abort(grpc.StatusCode.DEADLINE_EXCEEDED,
                                    f"the call took longer than {seconds:g}s ({env_name('grpc_unary_seconds')})")

        return handler._replace(request_streaming=True, unary_unary=None, stream_unary=call)
