"""One Llama-family decoder layer over a packed batch: RMSNorm, GQA attention with rotary
embeddings and a per-request KV cache, SwiGLU MLP.

Rows of all requests in a step are packed into one [T, hidden] tensor so projections and
the MLP run as single matmuls; attention runs per request against its own cache.
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from helix_worker import rotary
from helix_worker.checkpoint import CheckpointReader
from helix_worker.model_config import ModelConfig


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm computed in float32 and cast back, as the reference implementation does."""
    x32 = x.to(torch.float32)
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(x.dtype)


@dataclass(frozen=True)
class Segment:
    """One request's rows in a packed batch and where its cache is."""

    row: int  # first row in the packed tensor
    length: int  # rows (tokens) of this request in the step
    position: int  # absolute position of the first row
    keys: torch.Tensor  # this layer's cache [kv_heads, capacity, head_dim]
    values: torch.Tensor


@dataclass
class DecoderLayer:
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    o: torch.Tensor
    gate: torch.Tensor
    up: torch.Tensor
    down: torch.Tensor
    q_bias: torch.Tensor | None = None
    k_bias: torch.Tensor | None = None
    v_bias: torch.Tensor | None = None

    @classmethod
    def load(cls, reader: CheckpointReader, index: int, config: ModelConfig, dtype: torch.dtype,
             device: torch.device) -> "DecoderLayer":
        prefix = f"model.layers.{index}."

        def get(name: str) -> torch.Tensor:
            return reader.get(prefix + name, dtype, device)

        bias = {f"{p}_bias": get(f"self_attn.{p}_proj.bias") for p in "qkv"} if config.qkv_bias else {}
        return cls(
            input_norm=get("input_layernorm.weight"), post_norm=get("post_attention_layernorm.weight"),
            q=get("self_attn.q_proj.weight"), k=get("self_attn.k_proj.weight"), v=get("self_attn.v_proj.weight"),
            o=get("self_attn.o_proj.weight"), gate=get("mlp.gate_proj.weight"), up=get("mlp.up_proj.weight"),
            down=get("mlp.down_proj.weight"), **bias,
        )

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, segments: list[Segment],
                config: ModelConfig) -> torch.Tensor:
        """x [T, hidden] -> [T, hidden]; writes this step's keys and values into the caches."""
        rows, dim = x.shape[0], config.head_dim
        h = rms_norm(x, self.input_norm, config.rms_norm_eps)
        q = F.linear(h, self.q, self.q_bias).view(rows, config.num_heads, dim)
        k = F.linear(h, self.k, self.k_bias).view(rows, config.num_kv_heads, dim)
        v = F.linear(h, self.v, self.v_bias).view(rows, config.num_kv_heads, dim)
        q, k = rotary.apply(q, cos, sin), rotary.apply(k, cos, sin)
        out = torch.empty_like(q)
        for seg in segments:
            out[seg.row:seg.row + seg.length] = _attend(q, k, v, seg)
        x = x + F.linear(out.view(rows, config.num_heads * dim), self.o)
        h = rms_norm(x, self.post_norm, config.rms_norm_eps)
        return x + F.linear(F.silu(F.linear(h, self.gate)) * F.linear(h, self.up), self.down)


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segment) -> torch.Tensor:
    """Causal attention of one request's rows over its cached prefix plus these rows."""
    lo, hi, end = seg.row, seg.row + seg.length, seg.position + seg.length
    seg.keys[:, seg.position:end] = k[lo:hi].transpose(0, 1)
    seg.values[:, seg.position:end] = v[lo:hi].transpose(0, 1)
    query = q[lo:hi].transpose(0, 1)
    mask = None
    if seg.length > 1 and seg.position > 0:
        mask = torch.ones(seg.length, end, dtype=torch.bool, device=q.device).tril(diagonal=seg.position)
    out = F.scaled_dot_product_attention(query, seg.keys[:, :end], seg.values[:, :end], attn_mask=mask,
                                         is_causal=seg.length > 1 and seg.position == 0, enable_gqa=True)
    return out.transpose(0, 1)
