"""The operator in this process's event loop, logged in to a local API server."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import kmock
import kopf
from kubernetes.client import Configuration

from helix_operator.control.context import OperatorContext
from helix_operator.control.runtime import RunOptions, start


def server_url(api: kmock.KubernetesEmulator) -> str:
    return str(api.servers[0].url).rstrip("/")


@contextlib.asynccontextmanager
async def operator_in_process(api: kmock.KubernetesEmulator, options: RunOptions = RunOptions(resync_seconds=30)
                              ) -> AsyncIterator[OperatorContext]:
    """Start the operator against `api`, wait until kopf is ready; stopped and awaited on exit."""
    url = server_url(api)

    def login(**_: Any) -> kopf.ConnectionInfo:
        return kopf.ConnectionInfo(server=url, insecure=True)

    stop, ready = asyncio.Event(), asyncio.Event()
    started = await start(options, Configuration(host=url), login=login, stop_flag=stop, ready_flag=ready)
    try:
        await asyncio.wait_for(ready.wait(), 15)
        yield started.context
    finally:
        stop.set()
        # The API server (and any stand-in) serves from this loop: its connection handlers are not
        # the operator's tasks, and kopf would wait five seconds for them as hung ones.
        started.preexisting = {*started.preexisting, *_connection_handlers()}
        async with asyncio.timeout(20):  # not wait_for: that would run finish() in another task
            await started.finish()


def _connection_handlers() -> set[asyncio.Task[Any]]:
    """The tasks of aiohttp servers' open connections in this loop."""
    return {task for task in asyncio.all_tasks()
            if getattr(task.get_coro(), "__qualname__", "") == "RequestHandler.start"}
