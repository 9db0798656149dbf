"""A fixed batch of requests stepping together through a slice, with a pool of its own and no scheduler.

What `helix profile` times (one step at given prompt lengths or decode contexts) and what the
data-plane benchmark's in-process baseline generates with: the engine's own step (paged pool,
batched attention) without serving around it.
"""

import torch

from helix_worker.engine.attention import SequenceRows, StepLayout
from helix_worker.engine.kv_pool import BlockAllocator
from helix_worker.engine.model import LayerSlice


class StaticBatch:
    def __init__(self, model: LayerSlice, requests: int, max_tokens: int, *, cached: int = 0,
                 block_tokens: int = 16) -> None:
        """Room for `max_tokens` per request; each starts with `cached` tokens already in its cache
        (their values are whatever the pool holds: for timing only)."""
        self.model, self.block_tokens = model, block_tokens
        blocks = 1 + requests * -(-max_tokens // block_tokens)  # and the padding block
        self.allocator, self.pool = BlockAllocator(blocks, block_tokens), model.new_pool(blocks, block_tokens)
        self.cached = [cached] * requests

    def forward(self, inputs: torch.Tensor, lengths: list[int], *, advance: bool = True) -> torch.Tensor:
        """Run `lengths[i]` new rows of request i (packed in `inputs`); `advance` keeps them cached."""
        rows = []
        for index, (cached, length) in enumerate(zip(self.cached, lengths)):
            self.allocator.grow(str(index), cached + length)
            rows.append(SequenceRows(cached, length, self.allocator.tables[str(index)]))
        config = self.model.config
        layout = StepLayout.build(rows, self.block_tokens, config.num_heads, config.num_kv_heads, self.model.dtype,
                                  self.model.device)
        hidden = self.model.forward(inputs, layout, self.pool)
        if advance:
            self.cached = [c + n for c, n in zip(self.cached, lengths)]
        return hidden
