"""KV leases: a stage's KV held for requests belongs to the front-end session they answer to.

A request's tokens go back to its `reply_to` peer, the front end, which holds a `Connect`
stream to every stage of its routes for as long as it lives. While a peer has no stream
here (its process was killed, its host or network vanished: gRPC keepalive ends such a
stream), its lease runs out: after `lease_seconds` without one, every request answering to
it is released, its blocks freed and its later input dropped. A front end that reconnects in
time keeps its requests; one that never connects (a request forwarded after its front end
died) is treated as gone from the first sweep that sees it. Without this a killed front end's
reservations stayed on every stage for good.
"""

import asyncio
import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class LeaseKeeper:
    def __init__(self, lease_seconds: float, owners: Callable[[], dict[str, list[str]]],
                 connected: Callable[[str], bool], release: Callable[[list[str]], None]) -> None:
        """`owners`: request ids by peer; `connected`: whether a peer has a stream here now;
        `release`: frees requests (as a front end's Release would)."""
        if lease_seconds <= 0:
            raise ValueError(f"the KV lease must be positive, not {lease_seconds}")
        self.lease_seconds = lease_seconds
        self._owners, self._connected, self._release = owners, connected, release
        self._absent: dict[str, float] = {}  # peer -> when a sweep first saw it hold KV without a stream

    def sweep(self, now: float | None = None) -> list[str]:
        """Release the requests of peers absent for a whole lease; returns their ids."""
        now = time.monotonic() if now is None else now
        owners = self._owners()
        self._absent = {p: t for p, t in self._absent.items() if p in owners and not self._connected(p)}
        expired: list[str] = []
        for peer, request_ids in owners.items():
            if self._connected(peer):
                continue
            since = self._absent.setdefault(peer, now)
            if now - since >= self.lease_seconds:
                log.warning("front end %s has had no stream here for %.1fs: its lease ended, releasing the KV "
                            "of its %d requests", peer, now - since, len(request_ids))
                expired += request_ids
                del self._absent[peer]
        if expired:
            self._release(expired)
        return expired

    async def run(self) -> None:
        """Sweep every tenth of a lease (until cancelled): KV is freed within 1.2 leases of a peer leaving."""
        while True:
            await asyncio.sleep(self.lease_seconds / 10)
            self.sweep()
