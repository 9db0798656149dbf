"""The HTTP side every process shares: liveness, readiness and Prometheus metrics (aiohttp)."""

import asyncio
import ssl
from collections.abc import Callable

from aiohttp import web

from helix_worker.metrics import CONTENT_TYPE


def health_routes(app: web.Application, ready: Callable[[], bool], render_metrics: Callable[[], bytes],
                  alive: Callable[[], bool] = lambda: True) -> None:
    """/healthz: the process answers and `alive` (503 once it is broken for good, so that a
    supervisor restarts it); /readyz: it can serve (503 until then); /metrics."""

    async def healthz(_: web.Request) -> web.Response:
        ok = alive()
        return web.json_response({"status": "ok" if ok else "broken"}, status=200 if ok else 503)

    async def readyz(_: web.Request) -> web.Response:
        ok = ready()
        return web.json_response({"ready": ok}, status=200 if ok else 503)

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=render_metrics(), headers={"Content-Type": CONTENT_TYPE})

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)


async def start_site(app: web.Application, host: str, port: int, shutdown_seconds: float = 60.0,
                     idle_seconds: float | None = None,
                     ssl_context: ssl.SSLContext | None = None) -> tuple[web.AppRunner, int]:
    """Serve `app`; returns the runner (its cleanup lets requests in flight finish for at most
    `shutdown_seconds`) and the bound port (port 0 picks one). A connection that sends no whole
    request head within `idle_seconds` of opening or of its last response is closed (aiohttp's
    default waits an hour), and so is one still sending a body its answer left unread after
    that long (aiohttp's default: 10 s). A handler whose client disconnects is cancelled:
    aiohttp would otherwise run it to the end, which for a generation means holding KV cache
    for nobody. With `ssl_context` it serves HTTPS."""
    if idle_seconds is None:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_seconds, handler_cancellation=True)
    else:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=shutdown_seconds, handler_cancellation=True,
                               keepalive_timeout=idle_seconds, lingering_time=idle_seconds)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    server = site._server  # aiohttp exposes no public accessor for the bound port
    if not isinstance(server, asyncio.Server):
        raise RuntimeError(f"aiohttp's TCP site holds {server!r}, not a listening asyncio.Server")
    bound: int = server.sockets[0].getsockname()[1]
    return runner, bound
