"""The decoder shape read from a Hugging Face `config.json` (Llama, Mistral, Qwen2 families)."""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from helix_worker.checkpoint import read_json
from helix_worker.errors import ServingError

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


@dataclass(frozen=True)
class ModelConfig:
    """What the layer math needs; `qkv_bias` is on for Qwen2 and for Llama's `attention_bias`."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: dict[str, Any] | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    dtype: str = "float32"
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = field(default=())

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def kv_bytes_per_token(self, layers: int, dtype: torch.dtype | None = None) -> int:
        """Bytes of K and V for one token over `layers` layers."""
        width = torch.empty((), dtype=dtype or self.torch_dtype).element_size()
        return 2 * layers * self.num_kv_heads * self.head_dim * width

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        model_type = str(data.get("model_type", "llama"))
        if model_type not in SUPPORTED_TYPES:
            raise ServingError(f"model_type {model_type!r} is not supported: use a {'/'.join(SUPPORTED_TYPES)} checkpoint")
        try:
            hidden, heads = int(data["hidden_size"]), int(data["num_attention_heads"])
            eos = data.get("eos_token_id")
            config = cls(
                model_type=model_type,
                hidden_size=hidden,
                intermediate_size=int(data["intermediate_size"]),
                num_layers=int(data["num_hidden_layers"]),
                num_heads=heads,
                num_kv_heads=int(data.get("num_key_value_heads") or heads),
                head_dim=int(data.get("head_dim") or hidden // heads),
                vocab_size=int(data["vocab_size"]),
                rms_norm_eps=float(data.get("rms_norm_eps", 1e-5)),
                rope_theta=float(data.get("rope_theta", 10000.0)),
                rope_scaling=data.get("rope_scaling"),
                max_position_embeddings=int(data.get("max_position_embeddings", 4096)),
                tie_word_embeddings=bool(data.get("tie_word_embeddings", False)),
                qkv_bias=model_type == "qwen2" or bool(data.get("attention_bias", False)),
                dtype=str(data.get("torch_dtype") or "float32"),
                bos_token_id=data.get("bos_token_id"),
                eos_token_ids=tuple(eos if isinstance(eos, list) else [] if eos is None else [eos]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ServingError(f"config.json lacks or garbles {err}: a Llama-family config needs hidden_size, "
                               "intermediate_size, num_hidden_layers, num_attention_heads and vocab_size") from None
        if config.dtype not in DTYPES:
            raise ServingError(f"torch_dtype {config.dtype!r} is not supported: use float32, bfloat16 or float16")
        if config.num_heads % config.num_kv_heads:
            raise ServingError(f"num_attention_heads {config.num_heads} is not a multiple of "
                               f"num_key_value_heads {config.num_kv_heads}")
        return config

    def to_dict(self) -> dict[str, Any]:
        """A Hugging Face style config.json body."""
        data: dict[str, Any] = {
            "architectures": ["Qwen2ForCausalLM" if self.model_type == "qwen2" else "LlamaForCausalLM"],
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.qkv_bias,
            "hidden_act": "silu",
            "torch_dtype": self.dtype,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": list(self.eos_token_ids) if len(self.eos_token_ids) != 1 else self.eos_token_ids[0],
        }
        return data


def parse_dtype(name: str) -> torch.dtype | None:
    """A dtype override by name; empty means the checkpoint's own dtype."""
    if not name:
        return None
    if name not in DTYPES:
        raise ServingError(f"dtype {name!r} is not supported: use one of {', '.join(sorted(DTYPES))}")
    return DTYPES[name]


def load_model_config(checkpoint: Path) -> ModelConfig:
    data = read_json(Path(checkpoint) / "config.json", f"{checkpoint} is not a checkpoint directory: it has no "
                     "config.json (create a demo one with `helix model init DIR`)")
    return ModelConfig.from_dict(data)
