"""Per-request KV cache of one stage, sized at prefill to the tokens the front end reserved.

Each request gets contiguous keys/values [layers, kv_heads, reserve, head_dim] for the
stage's layers; the total is bounded by `capacity_tokens`, the same figure the front end's
admission control reserves against, so a step never runs out of cache halfway.
"""

from dataclasses import dataclass

import torch


class KVCacheFull(Exception):
    """The stage cannot reserve the tokens a prefill asks for."""


@dataclass
class RequestCache:
    keys: torch.Tensor  # [layers, kv_heads, capacity, head_dim]
    values: torch.Tensor
    capacity: int
    length: int = 0  # tokens written so far


@dataclass(frozen=True)
class KVUsage:
    capacity_tokens: int
    reserved_tokens: int
    used_tokens: int
    requests: int

    @property
    def reserved_fraction(self) -> float:
        return self.reserved_tokens / self.capacity_tokens if self.capacity_tokens else 0.0


class KVCache:
    """Allocates, finds and frees request caches within a token budget."""

    def __init__(self, capacity_tokens: int, layers: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.capacity_tokens = capacity_tokens
        self._shape = (layers, kv_heads, head_dim)
        self._dtype, self._device = dtype, device
        self._requests: dict[str, RequestCache] = {}
        self._reserved = 0

    def allocate(self, request_id: str, tokens: int) -> RequestCache:
        if request_id in self._requests:
            self.free(request_id)
        if self._reserved + tokens > self.capacity_tokens:
            raise KVCacheFull(f"KV cache full: {tokens} tokens asked, "
                              f"{self.capacity_tokens - self._reserved} of {self.capacity_tokens} free")
        layers, heads, dim = self._shape
        keys = torch.empty(layers, heads, tokens, dim, dtype=self._dtype, device=self._device)
        cache = RequestCache(keys, torch.empty_like(keys), tokens)
        self._requests[request_id] = cache
        self._reserved += tokens
        return cache

    def get(self, request_id: str) -> RequestCache | None:
        return self._requests.get(request_id)

    def free(self, request_id: str) -> bool:
        cache = self._requests.pop(request_id, None)
        if cache is None:
            return False
        self._reserved -= cache.capacity
        return True

    def usage(self) -> KVUsage:
        used = sum(c.length for c in self._requests.values())
        return KVUsage(self.capacity_tokens, self._reserved, used, len(self._requests))
