"""What a stage measures while serving, kept as a recent window for its heartbeat answers.

Profiles are measured once; a device that slows down shows only in the steps it runs now. So
the engine keeps its recent steps (size, layers, seconds) and the stage the activation frames
that reach it, each bounded in count and age, and every Describe answer carries them; the front
end gathers them into the observed-capacity document (format: `helix_planner.observed`). Old
samples age out, so a figure always says what the stage does now, not since it started.
"""

import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from helix_worker.protocol import Phase

WINDOW_SAMPLES = 64  # per kind: enough for a median that one slow step does not move
WINDOW_SECONDS = 60.0  # older samples describe a past the planner should not act on

T = TypeVar("T")


class Window(Generic[T]):
    """The last `size` items added within `seconds`."""

    def __init__(self, size: int = WINDOW_SAMPLES, seconds: float = WINDOW_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.seconds, self._clock = seconds, clock
        self._items: deque[tuple[float, T]] = deque(maxlen=size)

    def add(self, item: T) -> None:
        self._items.append((self._clock(), item))

    def recent(self) -> list[T]:
        oldest = self._clock() - self.seconds
        while self._items and self._items[0][0] < oldest:
            self._items.popleft()
        return [item for _, item in self._items]


@dataclass(frozen=True)
class StepTiming:
    size: int  # token rows the step ran (a decode step's batch)
    layers: float  # layers per row, averaged over rows (a stage may run part of its layers for a route)
    seconds: float


@dataclass(frozen=True)
class FrameTiming:
    """An activation frame from upstream `peer`, timed from its first byte to its last."""

    peer: str
    bytes: int
    seconds: float


@dataclass(frozen=True)
class PieceShape:
    """What the window needs of one piece of a step: its phase, rows and layer count."""

    phase: Phase
    rows: int
    layers: int


class StepWindow:
    """Recent decode-only steps and recent steps with prompt tokens, apart (the profile has a curve for each)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.decode: Window[StepTiming] = Window(clock=clock)
        self.prefill: Window[StepTiming] = Window(clock=clock)

    def record(self, pieces: list[PieceShape], seconds: float) -> None:
        rows = sum(p.rows for p in pieces)
        if rows <= 0:
            return
        timing = StepTiming(rows, sum(p.rows * p.layers for p in pieces) / rows, seconds)
        (self.decode if all(p.phase == Phase.DECODE for p in pieces) else self.prefill).add(timing)
