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
    """One directed link's sending queue of tokens, each `token_bytes` on the wire (token ids
    to and from the front end, hidden states between nodes)."""

    bandwidth: float
    latency: float
    token_bytes: float
    free_at: float = 0.0

    @property
    def seconds_per_token(self) -> float:
        return self.token_bytes / self.bandwidth

    def backlog(self, now: float) -> float:
        """Seconds a transfer queued now waits before it starts."""
        return self.free_at - now if self.free_at > now else 0.0

    def send(self, now: float, tokens: int) -> float:
        """Queue `tokens` at `now`; return when the last byte reaches the receiver."""
        start = now if now > self.free_at else self.free_at
        self.free_at = start + tokens * self.token_bytes / self.bandwidth
        return self.free_at + self.latency
