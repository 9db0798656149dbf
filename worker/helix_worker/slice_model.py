"""The layers [start, end) of a Llama-family decoder, loaded tensor by tensor.

The first stage (start 0) also holds the token embedding, the last (end = num_layers) the
final norm and LM head (the embedding again when the checkpoint ties them). The single-
process reference is simply the slice [0, num_layers).
"""

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from helix_worker import rotary
from helix_worker.checkpoint import CheckpointReader
from helix_worker.errors import ServingError
from helix_worker.kv_cache import RequestCache
from helix_worker.layers import DecoderLayer, Segment, rms_norm
from helix_worker.model_config import ModelConfig, load_model_config

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rows:
    """One request's rows in a packed step: how many, from which position, into which cache."""

    length: int
    position: int
    cache: RequestCache


class LayerSlice:
    def __init__(self, config: ModelConfig, start: int, end: int, layers: list[DecoderLayer],
                 embed: torch.Tensor | None, norm: torch.Tensor | None, head: torch.Tensor | None,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.config, self.start, self.end = config, start, end
        self.layers, self.embed, self.norm, self.head = layers, embed, norm, head
        self.dtype, self.device = dtype, device
        self.inv_freq = rotary.inverse_frequencies(config.head_dim, config.rope_theta, config.rope_scaling).to(device)

    @property
    def is_first(self) -> bool:
        return self.start == 0

    @property
    def is_last(self) -> bool:
        return self.end == self.config.num_layers

    @classmethod
    def load(cls, checkpoint: Path, start: int, end: int, *, dtype: torch.dtype | None = None,
             device: str | torch.device = "cpu") -> "LayerSlice":
        """Read only the tensors of layers [start, end) (plus embedding / head at the ends)."""
        config = load_model_config(checkpoint)
        if not 0 <= start < end <= config.num_layers:
            raise ServingError(f"layer range [{start}, {end}) is outside the model's {config.num_layers} layers")
        dtype = dtype or config.torch_dtype
        device = torch.device(device)
        with CheckpointReader(checkpoint) as reader:
            layers = []
            for index in range(start, end):
                layers.append(DecoderLayer.load(reader, index, config, dtype, device))
                log.debug("loaded layer %d of [%d, %d)", index, start, end)
            embed = reader.get("model.embed_tokens.weight", dtype, device) if start == 0 else None
            norm = head = None
            if end == config.num_layers:
                norm = reader.get("model.norm.weight", dtype, device)
                tied = config.tie_word_embeddings or not reader.has("lm_head.weight")
                if tied and embed is not None:
                    head = embed
                else:
                    head = reader.get("model.embed_tokens.weight" if tied else "lm_head.weight", dtype, device)
        return cls(config, start, end, layers, embed, norm, head, dtype, device)

    def new_cache_shape(self) -> tuple[int, int, int]:
        return len(self.layers), self.config.num_kv_heads, self.config.head_dim

    @torch.inference_mode()
    def forward(self, inputs: torch.Tensor, rows: list[Rows], start: int | None = None,
                end: int | None = None) -> torch.Tensor:
        """Run layers [start, end) (default: all held) over packed rows.

        `inputs` are token ids [T] (integers, embedded first) or hidden states [T, hidden].
        Each request's cache receives this step's keys and values at its positions.
        """
        start = self.start if start is None else start
        end = self.end if end is None else end
        if not self.start <= start < end <= self.end:
            raise ServingError(f"layers [{start}, {end}) are not all on this stage, which holds [{self.start}, {self.end})")
        inputs = inputs.to(self.device)
        if inputs.is_floating_point():
            x = inputs.to(self.dtype)
        elif self.embed is None:
            raise ServingError("this stage got token ids but does not hold the embedding")
        else:
            x = self.embed[inputs]
        positions = torch.cat([torch.arange(r.position, r.position + r.length) for r in rows]).to(self.device)
        cos, sin = rotary.cos_sin(self.inv_freq, positions, self.dtype)
        offsets = [0]
        for r in rows:
            offsets.append(offsets[-1] + r.length)
        for index in range(start - self.start, end - self.start):
            segments = [Segment(offsets[i], r.length, r.position, r.cache.keys[index], r.cache.values[index])
                        for i, r in enumerate(rows)]
            x = self.layers[index].forward(x, cos, sin, segments, self.config)
        for r in rows:
            r.cache.length = max(r.cache.length, r.position + r.length)
        return x

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head over hidden rows [n, hidden] -> float32 logits [n, vocab]."""
        if self.head is None or self.norm is None:
            raise ServingError("this stage does not hold the LM head")
        return torch.nn.functional.linear(rms_norm(hidden, self.norm, self.config.rms_norm_eps), self.head).float()
