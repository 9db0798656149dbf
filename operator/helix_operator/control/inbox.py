"""Wake-ups of one HelixCluster's controller loop.

Spec, pod and GPU-profile changes and new observed capacity wake it at once; node changes only after `debounce`
seconds without another node change, so a node pool scaling by ten is one replan, not ten.
"""

import asyncio
import time
from collections.abc import Callable

SPEC, NODES, PODS, PROFILES, TIMER, CAPACITY = "spec", "nodes", "pods", "profiles", "timer", "capacity"


class Inbox:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._pending: set[str] = set()
        self._last_node_change = 0.0
        self._changed = asyncio.Event()

    def notify(self, kind: str) -> None:
        if kind == NODES:
            self._last_node_change = self._clock()
        self._pending.add(kind)
        self._changed.set()

    async def wait(self, debounce: float, deadline: float | None = None,
                   ignore: frozenset[str] = frozenset()) -> set[str]:
        """The kinds due now (TIMER when `deadline` passed first); `ignore`d kinds stay pending."""
        while True:
            now = self._clock()
            due = {k for k in self._pending - ignore if k != NODES}
            if NODES in self._pending - ignore and now - self._last_node_change >= debounce:
                due.add(NODES)
            if due:
                self._pending -= due
                return due
            if deadline is not None and now >= deadline:
                return {TIMER}
            timeouts = [deadline - now] if deadline is not None else []
            if NODES in self._pending - ignore:
                timeouts.append(self._last_node_change + debounce - now)
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(timeouts) if timeouts else None)
            except TimeoutError:
                pass
