"""Stage liveness as the front end sees it: a heartbeat to every stage, and the verdict on it.

gRPC keepalive notices a connection that is gone, not a process that stopped answering: a
SIGSTOPped or wedged stage keeps its sockets, its streams stay open, and requests routed into
it froze for as long as it did. So every `heartbeat_seconds` the front end asks each stage it
counts as up for its `StageInfo` (Describe) with a deadline of `hung_seconds`. A stage that
misses the deadline, reports itself unready (its engine stopped), or has held runnable work
for `hung_seconds` without finishing a step (a hung compute thread or device, which leaves
its event loop answering) is declared hung; the coordinator then takes its pipelines out of
rotation and re-prefills their requests elsewhere, within `heartbeat_seconds + hung_seconds`
of the hang, and its probe brings it back once `verdict` finds it healthy again. Each answer
also carries the stage's KV use, which the admission ledger reads (see `routes`), and which of
the next hops the asking front end's routes take from there it cannot forward to now.
"""

import asyncio
from collections.abc import Awaitable, Callable

import grpc

from helix_proto import helix_stage_pb2 as pb


def verdict(info: pb.StageInfo, hung_seconds: float) -> str | None:
    """Why a stage that answered cannot serve now; None when it can."""
    if not info.ready:
        return f"not ready: {info.problem or 'no reason given'}"
    if info.stalled_seconds >= hung_seconds:
        return f"no step finished in {info.stalled_seconds:.1f}s with work to run"
    return None


class Heartbeat:
    """One watcher task per stage; reports each answer to `healthy` and each failure to `hung`."""

    def __init__(self, nodes: list[str], describe: Callable[[str, float], Awaitable[pb.StageInfo]],
                 is_up: Callable[[str], bool], healthy: Callable[[str, pb.StageInfo], None],
                 hung: Callable[[str, str], None], *, interval: float, hung_seconds: float) -> None:
        self.nodes, self.interval, self.hung_seconds = nodes, interval, hung_seconds
        self._describe, self._is_up, self._healthy, self._hung = describe, is_up, healthy, hung
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(self._watch(node)) for node in self.nodes]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _watch(self, node: str) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not self._is_up(node):
                continue  # down stages are the probe's
            try:
                info = await self._describe(node, self.hung_seconds)
                problem = verdict(info, self.hung_seconds)
            except grpc.aio.AioRpcError as err:
                late = err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
                problem = f"no heartbeat answer within {self.hung_seconds:g}s" if late else \
                    f"heartbeat failed: {err.code().name}"
            except Exception as err:  # any other failure to answer counts too; the watcher lives on
                problem = f"heartbeat failed: {err!r}"
            if not self._is_up(node):
                continue  # it went down while we asked
            if problem is None:
                self._healthy(node, info)
            else:
                self._hung(node, problem)
