"""The paged KV cache of one stage: one preallocated pool of fixed-size blocks, block tables per request.

Memory is taken a block at a time as a request's tokens arrive and returned when it finishes,
is cancelled or is preempted, so a request holds what it has written, not what it might write
(`max_tokens`). Block 0 is never handed out: it stays zero and pads the block tables of shorter
requests in a batched gather, so masked padding can never carry another request's NaN.
"""

from dataclasses import dataclass

import torch

PAD_BLOCK = 0


@dataclass(frozen=True)
class KVUsage:
    capacity_tokens: int
    used_tokens: int  # tokens' worth of blocks held by requests
    requests: int
    block_tokens: int


class KVPool:
    """Keys and values of every layer on this stage: [layers, 2, blocks, kv_heads, block_tokens, head_dim].

    Within a block, heads are the outer axis (the "HND" layout, as in FlashInfer's paged cache
    option): each (block, head) is one contiguous row, so gathering rows in request, head,
    block order lays keys out as the attention kernel reads them, with no transpose.
    """

    def __init__(self, blocks: int, block_tokens: int, layers: int, kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.blocks, self.block_tokens, self.kv_heads = blocks, block_tokens, kv_heads
        self.data = torch.zeros(layers, 2, blocks, kv_heads, block_tokens, head_dim, dtype=dtype, device=device)
        self._gathered = [self.data.new_empty(0), self.data.new_empty(0)]  # keys', values' gather buffers

    def gather(self, layer: int, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one layer's pool `rows` (block x kv_heads + head), one row each, in
        buffers kept across steps: a fresh tensor of tens of MiB each time is mapped and
        page-faulted in anew (a 4 ms gather took 22 ms so)."""
        out = []
        for side in (0, 1):
            source = self.data[layer, side].view(self.blocks * self.kv_heads, -1)
            needed = rows.numel() * source.shape[1]
            if self._gathered[side].numel() < needed:
                self._gathered[side] = source.new_empty(needed)
            gathered = self._gathered[side][:needed].view(rows.numel(), source.shape[1])
            out.append(torch.index_select(source, 0, rows, out=gathered))
        return out[0], out[1]

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.data[index, 0], self.data[index, 1]

    def clear(self, blocks: list[int]) -> None:
        """Zero blocks before a new owner writes them (stale rows beyond its length are masked,
        and a masked NaN would still poison the weighted sum)."""
        if blocks:
            self.data[:, :, torch.tensor(blocks, device=self.data.device)] = 0


class BlockAllocator:
    """Free list and block tables; all bookkeeping, no tensors (the scheduler's thread owns it)."""

    def __init__(self, blocks: int, block_tokens: int) -> None:
        if blocks < 2:
            raise ValueError(f"a KV pool needs at least 2 blocks (one is padding), not {blocks}")
        self.block_tokens = block_tokens
        self.total = blocks - 1  # usable blocks
        self._free = list(range(blocks - 1, PAD_BLOCK, -1))  # pop() hands out low indices first
        self.tables: dict[str, list[int]] = {}

    @property
    def free_blocks(self) -> int:
        return len(self._free)

    @property
    def capacity_tokens(self) -> int:
        return self.total * self.block_tokens

    def blocks_for(self, tokens: int) -> int:
        return -(-tokens // self.block_tokens)

    def shortfall(self, request_id: str, tokens: int) -> int:
        """Blocks missing for `request_id` to hold `tokens` tokens in all."""
        held = len(self.tables.get(request_id, ()))
        return max(0, self.blocks_for(tokens) - held - len(self._free))

    def grow(self, request_id: str, tokens: int) -> list[int]:
        """Extend the request's table to hold `tokens` tokens; returns the new blocks.
        The caller checks `shortfall` first: growing past the free list is a bug."""
        table = self.tables.setdefault(request_id, [])
        need = self.blocks_for(tokens) - len(table)
        if need > len(self._free):
            raise RuntimeError(f"KV pool: {need} blocks asked for {request_id}, {len(self._free)} free")
        fresh = [self._free.pop() for _ in range(max(0, need))]
        table.extend(fresh)
        return fresh

    def free(self, request_id: str) -> bool:
        table = self.tables.pop(request_id, None)
        if table is None:
            return False
        self._free.extend(reversed(table))
        return True

    def usage(self) -> KVUsage:
        held = self.total - len(self._free)
        return KVUsage(self.capacity_tokens, held * self.block_tokens, len(self.tables), self.block_tokens)
