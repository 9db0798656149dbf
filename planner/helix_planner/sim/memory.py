"""KV cache of one node, in token-layers (one token's keys and values for one layer).

Admission reserves a request's whole worst case (prompt + all output tokens, times the
layers it runs here) before its prompt is sent, so a running request can never overflow a
cache: a request that does not fit waits at the front end instead of being dropped or
preempted. `used` follows what is really stored as prompts and decode steps complete; it is
what the utilisation figures report.
"""

from dataclasses import dataclass


@dataclass(slots=True)
class KvCache:
    """`capacity` token-layers; admission may reserve up to `high_water` of it."""

    capacity: float
    high_water: float = 0.9
    reserved: float = 0.0
    used: float = 0.0

    def fits(self, amount: float) -> bool:
        return self.reserved + amount <= self.capacity * self.high_water

    def reserve(self, amount: float) -> None:
        self.reserved += amount

    def release(self, reserved: float, stored: float) -> None:
        """A request finished: give back its reservation and what it stored."""
        self.reserved -= reserved
        self.used -= stored

    @property
    def utilisation(self) -> float:
        return self.used / self.capacity
