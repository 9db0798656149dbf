"""Directed links: serialization at the link's bandwidth, then propagation latency.

A link carries one transfer at a time, first come first served, at its full bandwidth
(no fair sharing): a transfer starts when the previous one has left the sender, takes
bytes / bandwidth to put on the wire and arrives `latency` later. Because the order is FIFO
and nothing preempts, the arrival time is known when the transfer is queued, so a transfer
costs one event (its arrival). NICs are not modelled separately (in the reference clusters
they are never the bottleneck).
"""

from dataclasses import dataclass


@dataclass(slots=True)
class Channel:
    """One directed link's sending queue; `busy_seconds` is time spent serializing."""

    bandwidth: float
    latency: float
    free_at: float = 0.0
    busy_seconds: float = 0.0
    bytes_sent: float = 0.0

    def send(self, now: float, nbytes: float) -> float:
        """Queue `nbytes` at `now`; return when the last byte reaches the receiver."""
        start = now if now > self.free_at else self.free_at
        seconds = nbytes / self.bandwidth
        self.free_at = start + seconds
        self.busy_seconds += seconds
        self.bytes_sent += nbytes
        return self.free_at + self.latency
