"""The data channel: a raw TCP side channel that carries one stage stream's messages.

gRPC's Python transport moves 1 MiB activations at a fraction of what the socket can (the
bytes are copied through protobuf, the core's slices and Python objects on both sides). So
when a peer offers it in the `Connect` call's metadata, the stage answers with a port and a
one-time token; the peer connects there, presents the token, and from then on sends that
stream's messages on the socket: a prefix (header and payload lengths), the `StageRequest`
without its tensor bytes, then the bytes, which the stage receives straight into the
tensor's memory. The gRPC stream stays open for everything else (events back, liveness),
and a peer that cannot connect keeps sending on the gRPC stream itself. With the cluster's
TLS the channel is mutually authenticated like the stream (a client without a certificate
from the cluster CA never gets as far as presenting a token) and encrypted. The stage times
each large frame from its first byte to its last (`FrameTimer`): what the link from that
peer carries, measured on real traffic where no socket buffer hides it.
"""

import asyncio
import logging
import secrets
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch

from helix_worker.security.issuing import MEMBER_NAME
from helix_worker.security.tls import HANDSHAKE_SECONDS, ClusterTLS

log = logging.getLogger(__name__)
HEADER = "helix-data-channel"  # metadata: "tcp" offered by the peer, "<port> <token>" answered
OFFER = "tcp"
_TOKEN_BYTES = 16
_TOKEN_SECONDS = 10.0  # a connection that has not presented a token by then is closed
_ACCEPTED = b"\x01"
_PREFIX = struct.Struct("<IQ")  # header bytes, payload bytes
TIMED_BYTES = 64 << 10  # smaller frames arrive in one read: their time says nothing about the link

FrameSink = Callable[[bytes, torch.Tensor | None], None]
FrameTimer = Callable[[int, float], None]  # (bytes of a frame, seconds from its first byte to its last)


@dataclass
class _Expected:
    on_frame: FrameSink
    on_lost: Callable[[], None]
    on_timed: FrameTimer | None = None
    transport: asyncio.Transport | None = None


class DataListener:
    """The stage's end: accepts data channels and hands each the stream its token belongs to."""

    def __init__(self, max_message_bytes: int, tls: ClusterTLS | None = None) -> None:
        self.max_message_bytes = max_message_bytes
        self._ssl = tls.server_context() if tls is not None else None
        self._expected: dict[bytes, _Expected] = {}
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str, port: int = 0) -> int:
        """Listen on `host:port` (port 0: any free one); returns the port."""
        self._server = await asyncio.get_running_loop().create_server(
            lambda: _Receiver(self), host, port, ssl=self._ssl,
            ssl_handshake_timeout=HANDSHAKE_SECONDS if self._ssl is not None else None)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    def expect(self, on_frame: FrameSink, on_lost: Callable[[], None],
               on_timed: FrameTimer | None = None) -> tuple[bytes, str]:
        """Await a channel for one stream; returns its token and the metadata value to answer.
        `on_timed` hears the size and wire time of every frame of at least TIMED_BYTES."""
        token = secrets.token_bytes(_TOKEN_BYTES)
        self._expected[token] = _Expected(on_frame, on_lost, on_timed)
        return token, f"{self.port} {token.hex()}"

    def withdraw(self, token: bytes) -> None:
        """The stream ended: close its channel, if one came."""
        expected = self._expected.pop(token, None)
        if expected is not None and expected.transport is not None:
            expected.transport.close()

    def _claim(self, token: bytes, transport: asyncio.Transport) -> _Expected | None:
        expected = self._expected.get(token)
        if expected is None or expected.transport is not None:
            return None
        expected.transport = transport
        return expected

    def _lost(self, token: bytes) -> None:
        expected = self._expected.pop(token, None)
        if expected is not None:
            expected.on_lost()

    async def close(self) -> None:
        for token in list(self._expected):
            self.withdraw(token)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class _Receiver(asyncio.BufferedProtocol):
    """Reads the token, then frames, each part into a buffer of exactly its size."""

    def __init__(self, listener: DataListener) -> None:
        self._listener = listener
        self._transport: asyncio.Transport | None = None
        self._token = b""
        self._expected: _Expected | None = None
        self._header = b""
        self._payload: torch.Tensor | None = None
        self._frame_started = 0.0  # when the current frame's prefix arrived
        self._want(bytearray(_TOKEN_BYTES), self._on_token)

    def _want(self, buffer: bytearray | memoryview, then: Callable[[asyncio.Transport], None]) -> None:
        self._buffer, self._filled, self._then = memoryview(buffer).cast("B"), 0, then

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):  # a stream server always hands a stream Transport
            raise TypeError(f"data channel on a {type(transport).__name__}, not a stream transport")
        self._transport = transport
        asyncio.get_running_loop().call_later(_TOKEN_SECONDS, self._close_unclaimed)

    def _close_unclaimed(self) -> None:
        if self._expected is None and self._transport is not None:
            self._transport.close()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._buffer[self._filled:]

    def buffer_updated(self, nbytes: int) -> None:
        self._filled += nbytes
        while self._filled == len(self._buffer) and (transport := self._transport) is not None \
                and not transport.is_closing():
            self._then(transport)

    def _on_token(self, transport: asyncio.Transport) -> None:
        self._token = bytes(self._buffer)
        self._expected = self._listener._claim(self._token, transport)
        if self._expected is None:
            log.warning("data channel with an unknown token refused")
            transport.close()
            return
        transport.write(_ACCEPTED)
        self._want(bytearray(_PREFIX.size), self._on_prefix)

    def _on_prefix(self, transport: asyncio.Transport) -> None:
        self._frame_started = time.perf_counter()
        header_bytes, payload_bytes = _PREFIX.unpack(self._buffer)
        if header_bytes + payload_bytes > self._listener.max_message_bytes:
            log.warning("data channel message of %d bytes exceeds the %d allowed; closing it",
                        header_bytes + payload_bytes, self._listener.max_message_bytes)
            transport.close()
            return
        self._payload = torch.empty(payload_bytes, dtype=torch.uint8) if payload_bytes else None
        self._want(bytearray(header_bytes), self._on_header)

    def _on_header(self, transport: asyncio.Transport) -> None:
        self._header = bytes(self._buffer)
        if self._payload is None:
            self._deliver(transport)
        else:
            self._want(self._payload.numpy().data, self._deliver)

    def _deliver(self, transport: asyncio.Transport) -> None:
        header, payload = self._header, self._payload
        self._header, self._payload = b"", None
        self._want(bytearray(_PREFIX.size), self._on_prefix)
        expected = self._expected
        if expected is None:  # never: frames are read only after the token was claimed
            return
        size = _PREFIX.size + len(header) + (payload.numel() if payload is not None else 0)
        if expected.on_timed is not None and size >= TIMED_BYTES:
            expected.on_timed(size, time.perf_counter() - self._frame_started)
        expected.on_frame(header, payload)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._expected is not None:
            self._listener._lost(self._token)


class DataSender(asyncio.Protocol):
    """The peer's end: writes frames; the stage only ever answers the token.

    Frames wait in a queue of references and reach the transport only while its own buffer
    is empty: the transport sends what the socket takes at once and copies the rest, so a
    burst of large messages costs one partial copy each, not a copy of everything queued."""

    def __init__(self, on_lost: Callable[[], None]) -> None:
        self._on_lost: Callable[[], None] | None = on_lost
        self._transport: asyncio.Transport | None = None
        self._accepted = asyncio.get_running_loop().create_future()
        self._pending: deque[bytes | memoryview] = deque()
        self._paused = False

    @classmethod
    async def open(cls, address: str, answer: str, timeout: float, on_lost: Callable[[], None],
                   tls: ClusterTLS | None = None) -> "DataSender":
        """Connect to the port a stage at `address` (host:port of its gRPC server) answered;
        raises OSError, TimeoutError or ValueError when that cannot work."""
        port, token = answer.split()
        host = address.rsplit(":", 1)[0].strip("[]")
        loop = asyncio.get_running_loop()
        connecting = (loop.create_connection(lambda: cls(on_lost), host, int(port)) if tls is None else
                      loop.create_connection(lambda: cls(on_lost), host, int(port), ssl=tls.client_context(),
                                             server_hostname=MEMBER_NAME))
        _, sender = await asyncio.wait_for(connecting, timeout)
        try:
            if sender._transport is None:  # connection_made runs before create_connection returns
                raise ConnectionError("the data channel closed before it was connected")
            sender._transport.write(bytes.fromhex(token))
            await asyncio.wait_for(sender._accepted, timeout)
        except BaseException:
            sender.close()
            raise
        return sender

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not isinstance(transport, asyncio.Transport):  # create_connection always makes a stream Transport
            raise TypeError(f"data channel on a {type(transport).__name__}, not a stream transport")
        self._transport = transport
        # Pause whenever the transport holds bytes. A TLS transport pauses at size >= high (a plain
        # one at size > high), so 0 would pause it for good after every write: it takes 1.
        tls = transport.get_extra_info("sslcontext") is not None
        transport.set_write_buffer_limits(high=1 if tls else 0)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self._accepted.done():
            return
        if data[:1] == _ACCEPTED:
            self._accepted.set_result(None)
        else:
            self._accepted.set_exception(ConnectionError(f"unexpected answer {data[:8]!r} to the data channel token"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._accepted.done():
            self._accepted.set_exception(ConnectionError("the stage refused the data channel"))
        elif self._on_lost is not None:
            self._on_lost()

    def send(self, header: bytes, payload: memoryview | None = None) -> None:
        """Queue one frame; the transport sends as the socket takes it (nothing here blocks)."""
        size = payload.nbytes if payload is not None else 0
        self._pending.append(_PREFIX.pack(len(header), size) + header)
        if payload is not None and size:
            self._pending.append(payload)
        self._flush()

    def _flush(self) -> None:
        transport = self._transport
        while self._pending and not self._paused and transport is not None and not transport.is_closing():
            transport.write(self._pending.popleft())

    def close(self) -> None:
        """Close without reporting a loss (the owner is closing)."""
        self._on_lost = None
        if self._transport is not None:
            self._transport.close()
