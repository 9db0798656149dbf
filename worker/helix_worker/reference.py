"""Single-process reference generation: the whole model in one slice, no serving machinery.

Every step recomputes the full sequence from scratch (no incremental KV cache), so it
checks the pipelined, batched, cached data plane against the plainest possible path.
"""

from dataclasses import dataclass
from pathlib import Path

import torch

from helix_worker.kv_cache import KVCache
from helix_worker.slice_model import LayerSlice, Rows


@dataclass(frozen=True)
class ReferenceRun:
    tokens: list[int]
    logits: list[torch.Tensor]  # float32 [vocab] before each sampled token


class ReferenceModel:
    def __init__(self, checkpoint: Path, *, dtype: torch.dtype | None = None, device: str = "cpu") -> None:
        probe = LayerSlice.load(checkpoint, 0, 1, dtype=dtype, device=device)
        self.model = LayerSlice.load(checkpoint, 0, probe.config.num_layers, dtype=dtype, device=device)

    def next_logits(self, ids: list[int]) -> torch.Tensor:
        layers, heads, dim = self.model.new_cache_shape()
        cache = KVCache(len(ids), layers, heads, dim, self.model.dtype, self.model.device).allocate("ref", len(ids))
        hidden = self.model.forward(torch.tensor(ids), [Rows(len(ids), 0, cache)])
        return self.model.logits(hidden[-1:])[0]

    def greedy(self, prompt: list[int], max_tokens: int, stop_ids: tuple[int, ...] = ()) -> ReferenceRun:
        ids, tokens, logits = list(prompt), [], []
        for _ in range(max_tokens):
            step = self.next_logits(ids)
            token = int(step.argmax())
            logits.append(step)
            tokens.append(token)
            ids.append(token)
            if token in stop_ids:
                break
        return ReferenceRun(tokens, logits)
