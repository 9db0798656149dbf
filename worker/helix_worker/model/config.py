"""The decoder shape of a Hugging Face checkpoint (Llama, Mistral, Qwen2 families), read by transformers.

transformers' own config classes parse `config.json`, so both layouts load alike: 4.x
(`rope_theta`, `rope_scaling`, `torch_dtype`) and 5.x (`rope_parameters`, `dtype`), with each
architecture's defaults (Mistral's 4096-token window, Qwen2's q/k/v biases). A feature the
engine lacks is refused with one error naming the field, never run approximately.
`generation_config.json`, when present, decides the EOS ids, as it does for `generate`.
"""

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PretrainedConfig

from helix_worker.errors import ServingError
from helix_worker.model.checkpoint import read_json

SUPPORTED_TYPES = ("llama", "mistral", "qwen2")
REQUIRED = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
ROPE_TYPES = ("default", "linear", "llama3")
GENERATION_CONFIG = "generation_config.json"
DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


@dataclass(frozen=True)
class ModelConfig:
    """What the layer math needs. `qkv_bias`: Qwen2, and Llama's `attention_bias` (which adds `o_bias`)."""

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
    o_bias: bool = False
    mlp_bias: bool = False
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
            raise ServingError(f"model_type {model_type!r} is not supported: "
                               f"use a {'/'.join(SUPPORTED_TYPES)} checkpoint")
        missing = [key for key in REQUIRED if key not in data]
        if missing:
            raise ServingError(f"config.json lacks {', '.join(missing)}: a Llama-family config needs "
                               f"{', '.join(REQUIRED)}")
        try:
            hf = AutoConfig.for_model(**data)
        except (TypeError, ValueError, KeyError) as err:
            raise ServingError(f"config.json is not a valid {model_type} config: {err}") from None
        refuse_unsupported(hf)
        rope = dict(hf.rope_parameters)
        eos = hf.eos_token_id
        config = cls(
            model_type=model_type,
            hidden_size=hf.hidden_size,
            intermediate_size=hf.intermediate_size,
            num_layers=hf.num_hidden_layers,
            num_heads=hf.num_attention_heads,
            num_kv_heads=hf.num_key_value_heads or hf.num_attention_heads,
            head_dim=getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads,
            vocab_size=hf.vocab_size,
            rms_norm_eps=float(hf.rms_norm_eps),
            rope_theta=float(rope["rope_theta"]),
            rope_scaling=None if rope["rope_type"] == "default" else rope,
            max_position_embeddings=hf.max_position_embeddings,
            tie_word_embeddings=bool(hf.tie_word_embeddings),
            qkv_bias=model_type == "qwen2" or bool(getattr(hf, "attention_bias", False)),
            o_bias=model_type != "qwen2" and bool(getattr(hf, "attention_bias", False)),
            mlp_bias=bool(getattr(hf, "mlp_bias", False)),
            dtype=dtype_name(hf.dtype),
            bos_token_id=hf.bos_token_id,
            eos_token_ids=eos_ids(eos),
        )
        if config.dtype not in DTYPES:
            raise ServingError(f"dtype {config.dtype!r} is not supported: use float32, bfloat16 or float16")
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
            "mlp_bias": self.mlp_bias,
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


def refuse_unsupported(hf: PretrainedConfig) -> None:
    """One clear error for the first architecture feature the engine does not implement."""
    if hf.hidden_act != "silu":
        raise ServingError(f"hidden_act {hf.hidden_act!r} is not supported: the engine's MLP is SiLU-gated")
    rope = hf.rope_parameters or {}
    if rope.get("rope_type", "default") not in ROPE_TYPES:
        raise ServingError(f"rope_parameters.rope_type {rope['rope_type']!r} is not supported "
                           f"({', '.join(ROPE_TYPES)} are)")
    if float(rope.get("partial_rotary_factor", 1.0)) != 1.0:
        raise ServingError("partial_rotary_factor is not supported: the engine rotates the whole head")
    window = getattr(hf, "sliding_window", None)
    layer_types = getattr(hf, "layer_types", None)
    windowed = window is not None and ("sliding_attention" in layer_types if layer_types else True)
    if windowed and window < hf.max_position_embeddings:
        raise ServingError(f"sliding_window {window} (shorter than max_position_embeddings "
                           f"{hf.max_position_embeddings}) is not supported: the engine attends to the whole context")


def dtype_name(dtype: torch.dtype | str | None) -> str:
    """`torch.bfloat16` or "bfloat16" -> "bfloat16"; none given means float32, as transformers loads it."""
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")


def eos_ids(eos: int | list[int] | None) -> tuple[int, ...]:
    return tuple(eos) if isinstance(eos, list) else () if eos is None else (int(eos),)


def load_model_config(checkpoint: Path) -> ModelConfig:
    """config.json, with the EOS ids of generation_config.json when that file names some."""
    checkpoint = Path(checkpoint)
    data = read_json(checkpoint / "config.json", f"{checkpoint} is not a checkpoint directory: it has no "
                     "config.json (create a demo one with `helix model init DIR`)")
    config = ModelConfig.from_dict(data)
    generation = checkpoint / GENERATION_CONFIG
    eos = eos_ids(read_json(generation, "").get("eos_token_id")) if generation.exists() else ()
    return replace(config, eos_token_ids=eos) if eos else config
