"""A floor on how thin a stage may be: nodes hold at least a share of the layers they could.

Max flow alone favours many thin stages (every node a few layers, pipelines dozens of hops
deep). In served traffic each hop costs a pass and a wait behind other passes, so deep
pipelines lose decode throughput that the flow objective never sees. Zeroing the capacity of
thin assignments lets the same planner (heuristics, bound, MILP) search only placements whose
stages are at least `fraction` of each GPU's layer limit; `serving_plan` picks the floor.
"""

import math

from helix_planner.errors import PlanningError
from helix_planner.throughput import CapacityModel


class MinLayersCapacityModel:
    """`inner`'s T(k), but 0 for k below `fraction` of the GPU type's maximum layer count."""

    def __init__(self, inner: CapacityModel, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise PlanningError(f"minimum layer fraction must be in [0, 1], got {fraction}")
        self.inner, self.fraction, self.name = inner, fraction, inner.name

    def min_layers(self, gpu: str) -> int:
        """Fewest layers a node of `gpu` may hold (at least 1)."""
        return max(1, math.ceil(self.fraction * self.inner.max_layers(gpu) - 1e-9))

    def max_layers(self, gpu: str) -> int:
        return self.inner.max_layers(gpu)

    def capacity(self, gpu: str, layers: int) -> float:
        return self.inner.capacity(gpu, layers) if layers >= self.min_layers(gpu) else 0.0
