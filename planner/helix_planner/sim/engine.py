"""The event loop: a heap of (time, sequence, action, argument).

The sequence number breaks ties in insertion order, so two runs with the same seed process
simultaneous events identically (determinism). Actions take one argument to avoid closures
on the hot path.
"""

import heapq
from collections.abc import Callable
from typing import Any

Action = Callable[[Any], None]


class EventQueue:
    """Discrete-event clock; `now` is the time of the event being handled."""

    def __init__(self) -> None:
        self.now = 0.0
        self.events_handled = 0
        self._heap: list[tuple[float, int, Action, Any]] = []
        self._sequence = 0

    def at(self, time: float, action: Action, argument: Any = None) -> None:
        """Run `action(argument)` at simulated `time` (never before `now`)."""
        heapq.heappush(self._heap, (max(time, self.now), self._sequence, action, argument))
        self._sequence += 1

    def run(self, until: float, tick: Callable[[float], None] | None = None, tick_every: int = 4096) -> None:
        """Handle events up to `until`; call `tick(now)` every `tick_every` events (progress)."""
        heap, pop = self._heap, heapq.heappop
        handled = 0
        while heap and heap[0][0] <= until:
            time, _, action, argument = pop(heap)
            self.now = time
            action(argument)
            handled += 1
            if tick is not None and handled % tick_every == 0:
                tick(time)
        self.now = max(self.now, until)
        self.events_handled += handled
