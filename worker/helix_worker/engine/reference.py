"""Single-process reference generation: the whole model in one slice, no serving machinery.

Every step recomputes the full sequence from scratch with plain causal attention (no KV
cache, no paging, no batching, no scheduler), so it checks the pipelined, batched, paged data
plane against the plainest possible path over the same weights.
"""

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from helix_worker.engine.model import LayerSlice
from helix_worker.model.config import load_model_config


@dataclass(frozen=True)
class ReferenceRun:
    tokens: list[int]
    logits: list[torch.Tensor]  # float32 [vocab] before each sampled token


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """One sequence's q [T, heads, dim] over its own k, v [T, kv_heads, dim], causally."""
    out = F.scaled_dot_product_attention(q.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1),
                                         is_causal=True, enable_gqa=True)
    return out.transpose(0, 1)


class ReferenceModel:
    def __init__(self, checkpoint: Path, *, dtype: torch.dtype | None = None, device: str = "cpu") -> None:
        layers = load_model_config(checkpoint).num_layers
        self.model = LayerSlice.load(checkpoint, 0, layers, dtype=dtype, device=device)

    def next_logits(self, ids: list[int]) -> torch.Tensor:
        hidden = self.model.run(torch.tensor(ids), torch.arange(len(ids)), lambda _: causal_attention,
                                0, self.model.config.num_layers)
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
