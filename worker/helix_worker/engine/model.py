"""The layers [start, end) of a Llama-family decoder, loaded tensor by tensor, run over a packed step.

The first stage (start 0) also holds the token embedding, the last (end = num_layers) the
final norm and LM head (the embedding again when the checkpoint ties them). The rows of every
request in a step are packed into one [T, hidden] tensor, so each projection is one matmul
(q, k and v fused into one, gate and up into another); only attention needs to know which
rows belong to which request, and it is handed in per layer (`Attend`), so the same weights
run the paged engine and the single-process reference.

On the CPU, bfloat16 projection weights are packed once, at load, into oneDNN's blocked
layout (torch's `mkldnn._reorder_linear_weight`, what inductor's CPU freezing does): a plain
`F.linear` in bfloat16 repacks the weight on every call, which made a 16-request decode step
read and write every weight twice (one thread, 12 projections of 5632 x 1024: 24 ms plain,
14 ms packed; results bit-identical).
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from helix_worker.engine import rotary
from helix_worker.engine.attention import StepLayout, paged_attention
from helix_worker.engine.kv_pool import KVPool
from helix_worker.errors import ServingError
from helix_worker.model.checkpoint import CheckpointReader
from helix_worker.model.config import ModelConfig, load_model_config

log = logging.getLogger(__name__)

# q [T, heads, dim], k and v [T, kv_heads, dim] -> [T, heads, dim]
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """`weight` in oneDNN's layout where that pays (bfloat16 on the CPU), else as it is."""
    if weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and _mkldnn_available():
        packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight, 16)  # serves every row count
        return packed
    return weight


def _mkldnn_available() -> bool:
    available: bool = torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]  # unannotated in torch
    return available


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    if weight.is_mkldnn:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
        return out
    return F.linear(x, weight, bias)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in float32 and cast back, as the reference implementation does."""
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


@dataclass
class DecoderLayer:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    qkv: torch.Tensor  # q, k and v projections stacked: [(heads + 2 kv_heads) x dim, hidden]
    o: torch.Tensor
    gate_up: torch.Tensor  # gate and up projections stacked: [2 x intermediate, hidden]
    down: torch.Tensor
    qkv_bias: torch.Tensor | None = None  # Qwen2, and Llama's attention_bias
    o_bias: torch.Tensor | None = None  # Llama's attention_bias
    gate_up_bias: torch.Tensor | None = None  # mlp_bias
    down_bias: torch.Tensor | None = None  # mlp_bias

    @classmethod
    def load(cls, reader: CheckpointReader, index: int, config: ModelConfig, dtype: torch.dtype,
             device: torch.device) -> "DecoderLayer":
        prefix = f"model.layers.{index}."

        def get(name: str) -> torch.Tensor:
            return reader.get(prefix + name, dtype, device)

        mlp_bias = config.mlp_bias
        return cls(
            input_norm=get("input_layernorm.weight"), post_norm=get("post_attention_layernorm.weight"),
            qkv=pack_weight(torch.cat([get(f"self_attn.{p}_proj.weight") for p in "qkv"])),
            o=pack_weight(get("self_attn.o_proj.weight")),
            gate_up=pack_weight(torch.cat([get("mlp.gate_proj.weight"), get("mlp.up_proj.weight")])),
            down=pack_weight(get("mlp.down_proj.weight")),
            qkv_bias=torch.cat([get(f"self_attn.{p}_proj.bias") for p in "qkv"]) if config.qkv_bias else None,
            o_bias=get("self_attn.o_proj.bias") if config.o_bias else None,
            gate_up_bias=torch.cat([get("mlp.gate_proj.bias"), get("mlp.up_proj.bias")]) if mlp_bias else None,
            down_bias=get("mlp.down_proj.bias") if mlp_bias else None,
        )

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in vars(self).values() if t is not None)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, attend: Attend,
                config: ModelConfig) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]."""
        rows, dim = x.shape[0], config.head_dim
        h = rms_norm(x, self.input_norm, config.rms_norm_eps)
        q, k, v = torch.split(linear(h, self.qkv, self.qkv_bias),
                              [config.num_heads * dim, config.num_kv_heads * dim, config.num_kv_heads * dim], dim=-1)
        q = rotary.apply(q.reshape(rows, config.num_heads, dim), cos, sin)
        k = rotary.apply(k.reshape(rows, config.num_kv_heads, dim), cos, sin)
        out = attend(q, k, v.reshape(rows, config.num_kv_heads, dim))
        x = x + linear(out.reshape(rows, config.num_heads * dim), self.o, self.o_bias)
        gate, up = linear(rms_norm(x, self.post_norm, config.rms_norm_eps), self.gate_up,
                          self.gate_up_bias).chunk(2, dim=-1)
        return x + linear(F.silu(gate) * up, self.down, self.down_bias)


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

    def new_pool(self, blocks: int, block_tokens: int) -> KVPool:
        """A KV pool of `blocks` blocks for the layers this slice holds."""
        return KVPool(blocks, block_tokens, len(self.layers), self.config.num_kv_heads, self.config.head_dim,
                      self.dtype, self.device)

    def kv_bytes_per_block(self, block_tokens: int) -> int:
        return block_tokens * self.config.kv_bytes_per_token(len(self.layers), self.dtype)

    @torch.inference_mode()
    def forward(self, inputs: torch.Tensor, layout: StepLayout, pool: KVPool, start: int | None = None,
                end: int | None = None) -> torch.Tensor:
        """Run layers [start, end) (default: all held) over a packed step, reading and writing the
        paged cache where `layout` says. `inputs` are token ids [T] or hidden states [T, hidden]."""
        start = self.start if start is None else start
        end = self.end if end is None else end

        def paged(index: int) -> Attend:
            return lambda q, k, v: paged_attention(q, k, v, pool, index, layout)

        return self.run(inputs, layout.positions, paged, start, end)

    @torch.inference_mode()
    def run(self, inputs: torch.Tensor, positions: torch.Tensor, attention: Callable[[int], Attend],
            start: int, end: int) -> torch.Tensor:
        """Layers [start, end) over rows at `positions`, attention for held layer i from `attention(i)`."""
        if not self.start <= start < end <= self.end:
            raise ServingError(f"layers [{start}, {end}) are not all on this stage, "
                               f"which holds [{self.start}, {self.end})")
        inputs = inputs.to(self.device)
        if inputs.is_floating_point():
            x = inputs.to(self.dtype)
        elif self.embed is None:
            raise ServingError("this stage got token ids but does not hold the embedding")
        else:
            x = self.embed[inputs]
        cos, sin = rotary.cos_sin(self.inv_freq, positions.to(self.device), self.dtype)
        for index in range(start - self.start, end - self.start):
            x = self.layers[index].forward(x, cos, sin, attention(index), self.config)
        return x

    @torch.inference_mode()
    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm and LM head over hidden rows [n, hidden] -> float32 logits [n, vocab]."""
        if self.head is None or self.norm is None:
            raise ServingError("this stage does not hold the LM head")
        return F.linear(rms_norm(hidden, self.norm, self.config.rms_norm_eps), self.head).float()
