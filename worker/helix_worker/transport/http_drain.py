"""Hand HTTP/1.1 keep-alive clients over to another server without failing a request.

A server that stops closes its idle keep-alive connections, and closes the others right after
their response; a client that sends its next request on such a connection at that moment (a
closed-loop client does so within a millisecond of the last answer) gets a reset instead of an
answer. So a draining front end first stops listening (new connections go elsewhere: to the new
front end behind `helix up`'s entry, or to another replica behind a Service), then keeps serving
the connections it has, answering every request with `Connection: close` (the client reconnects
for its next one), and stops once no request has started or ended for `QUIET_SECONDS`, or at
the drain deadline.
"""

import asyncio
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

QUIET_SECONDS = 1.0  # far above the gap between a keep-alive client's answer and its next request


class HttpDrain:
    def __init__(self) -> None:
        self.draining = False
        self._in_flight = 0
        self._last_activity = 0.0  # loop time a request last started or ended

    def install(self, app: web.Application) -> None:
        app.middlewares.append(self._track)
        app.on_response_prepare.append(self._close_after)

    @web.middleware
    async def _track(self, request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        loop = asyncio.get_running_loop()
        self._in_flight += 1
        self._last_activity = loop.time()
        try:
            return await handler(request)
        finally:
            self._in_flight -= 1
            self._last_activity = loop.time()

    async def _close_after(self, request: web.Request, response: web.StreamResponse) -> None:
        if self.draining:
            response.force_close()
            response.headers[hdrs.CONNECTION] = "close"

    async def close(self, runner: web.AppRunner, timeout: float) -> None:
        """Stop listening, serve the open connections until they are quiet (at most `timeout`), then clean up."""
        self.draining = True
        for site in list(runner.sites):
            await site.stop()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._in_flight or loop.time() - self._last_activity < QUIET_SECONDS) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        await runner.cleanup()
