"""Node-capacity models: tokens/s a node sustains when it holds k layers.

Each model answers two questions for the MILP and the evaluator: the most layers a GPU type
may hold, and its token capacity T(k) for every k up to that.
"""

from typing import Protocol


class CapacityModel(Protocol):
    """What the planner needs from a throughput model."""

    name: str

    def max_layers(self, gpu: str) -> int:
        """Most layers a node of this type may hold (0 if it cannot hold one)."""

    def capacity(self, gpu: str, layers: int) -> float:
        """Tokens/s (prompt and decode together) through a node holding `layers` layers."""
