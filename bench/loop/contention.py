"""How slow this machine is while a placement is served: a one-layer decode step, timed now and then.

The profile is the fastest of several repeats (the machine alone). While a fleet serves, every
process on the two cores waits for them, and how long depends on the plan's own load and on
whatever else runs on the machine, which changes from minute to minute. A light probe in the
bench's process (one torch thread, one step every PERIOD seconds, the profile's own decode step)
measures that slowdown for the window a placement is served in; it reads nothing the placement
reports. It is shown beside each placement, not used: its small step waits for a core relatively
longer than a stage's, so it overstates the workers' slowdown (x5 where their own steps said x3 on
a quiet machine); `helix_planner.sim.calibration` fits the stages' own step times instead.
"""

import statistics
import threading
import time
from pathlib import Path
from types import TracebackType

import torch

from helix_worker.engine.model import LayerSlice
from helix_worker.engine.static_batch import StaticBatch
from helix_worker.fleet.profile import BLOCK_TOKENS

PERIOD = 0.2  # seconds between probes
CONTEXT = 64  # the profile's decode context (bench/closed_loop.py measures with it)


class ContentionProbe:
    """`with ContentionProbe(checkpoint) as probe: ...`; then `probe.seconds()`: the median step."""

    def __init__(self, checkpoint: Path) -> None:
        model = LayerSlice.load(checkpoint, 0, 1)
        static = StaticBatch(model, 1, CONTEXT + 1, cached=CONTEXT, block_tokens=BLOCK_TOKENS)
        hidden = torch.randn(1, model.config.hidden_size).to(model.dtype)
        self._step = lambda: static.forward(hidden, [1], advance=False)
        self._step()  # warm-up
        self._times: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="contention-probe", daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(PERIOD):
            started = time.perf_counter()
            self._step()
            self._times.append(time.perf_counter() - started)

    def __enter__(self) -> "ContentionProbe":
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join()

    def seconds(self) -> float:
        return statistics.median(self._times) if self._times else float("nan")
