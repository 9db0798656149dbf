"""Model descriptions the planner needs: layer count and the bytes a layer and a token cost.

Built-in entries cover the paper's models (with the artifact's own byte figures, so that
objectives compare with the published ones) and common current Llama-family models.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from helix_planner.errors import PlanningError
from helix_planner.io.strict import check_keys

DTYPE_BYTES = {"float32": 4, "fp32": 4, "bfloat16": 2, "bf16": 2, "float16": 2, "fp16": 2, "int8": 1, "fp8": 1}


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer as the planner sees it (sizes in bytes)."""

    name: str
    num_layers: int
    hidden_size: int
    bytes_per_layer: float
    kv_bytes_per_token_layer: float
    dtype: str = "float16"
    token_bytes: int = 2
    intermediate_size: int = 0
    num_heads: int = 0
    num_kv_heads: int = 0
    vocab_size: int = 32000
    aliases: tuple[str, ...] = field(default=())

    @property
    def activation_bytes_per_token(self) -> float:
        """Bytes of one token's hidden state on a stage-to-stage hop."""
        return float(self.hidden_size * DTYPE_BYTES[self.dtype])

    @property
    def flops_per_token_layer(self) -> float:
        """Matmul FLOPs of one token through one layer (2 per weight, ignoring attention scores)."""
        return 2.0 * self.bytes_per_layer / DTYPE_BYTES[self.dtype]


def llama_like(
    name: str,
    *,
    num_layers: int,
    hidden_size: int,
    intermediate_size: int,
    num_heads: int,
    num_kv_heads: int,
    vocab_size: int,
    dtype: str = "float16",
    aliases: tuple[str, ...] = (),
) -> ModelSpec:
    """Derive byte sizes of a Llama-style layer (GQA attention, SwiGLU MLP, two RMSNorms)."""
    head_dim = hidden_size // num_heads
    kv_width = num_kv_heads * head_dim
    params = (
        2 * hidden_size * hidden_size
        + 2 * hidden_size * kv_width
        + 3 * hidden_size * intermediate_size
        + 2 * hidden_size
    )
    width = DTYPE_BYTES[dtype]
    return ModelSpec(
        name=name,
        num_layers=num_layers,
        hidden_size=hidden_size,
        bytes_per_layer=float(params * width),
        kv_bytes_per_token_layer=float(2 * kv_width * width),
        dtype=dtype,
        intermediate_size=intermediate_size,
        num_heads=num_heads,
        num_kv_heads=num_kv_heads,
        vocab_size=vocab_size,
        aliases=aliases,
    )


BUILTIN_MODELS: dict[str, ModelSpec] = {
    # The paper's models, with the Helix artifact's byte figures (1.53 GB and 1.0 GB per layer).
    "llama2-70b": ModelSpec(
        name="llama2-70b", num_layers=80, hidden_size=8192, bytes_per_layer=1.53e9,
        kv_bytes_per_token_layer=2 * 8 * 128 * 2, intermediate_size=28672, num_heads=64,
        num_kv_heads=8, aliases=("llama2_70b", "meta-llama/Llama-2-70b-hf"),
    ),
    "llama1-30b": ModelSpec(
        name="llama1-30b", num_layers=60, hidden_size=6656, bytes_per_layer=1.0e9,
        kv_bytes_per_token_layer=2 * 6656 * 2, intermediate_size=17920, num_heads=52,
        num_kv_heads=52, aliases=("llama1_30b", "llama-30b"),
    ),
    "llama3-8b": llama_like(
        "llama3-8b", num_layers=32, hidden_size=4096, intermediate_size=14336, num_heads=32,
        num_kv_heads=8, vocab_size=128256, dtype="bfloat16", aliases=("meta-llama/Meta-Llama-3-8B",),
    ),
    "llama3-70b": llama_like(
        "llama3-70b", num_layers=80, hidden_size=8192, intermediate_size=28672, num_heads=64,
        num_kv_heads=8, vocab_size=128256, dtype="bfloat16", aliases=("meta-llama/Meta-Llama-3-70B",),
    ),
    "qwen2.5-72b": llama_like(
        "qwen2.5-72b", num_layers=80, hidden_size=8192, intermediate_size=29568, num_heads=64,
        num_kv_heads=8, vocab_size=152064, dtype="bfloat16", aliases=("Qwen/Qwen2.5-72B",),
    ),
    "mistral-7b": llama_like(
        "mistral-7b", num_layers=32, hidden_size=4096, intermediate_size=14336, num_heads=32,
        num_kv_heads=8, vocab_size=32768, dtype="bfloat16", aliases=("mistralai/Mistral-7B-v0.3",),
    ),
}


def get_model(name: str) -> ModelSpec:
    """Look a model up by name or alias; the error lists what exists."""
    key = name.lower()
    for spec in BUILTIN_MODELS.values():
        if key == spec.name or key in (alias.lower() for alias in spec.aliases):
            return spec
    known = ", ".join(sorted(BUILTIN_MODELS))
    raise PlanningError(
        f"unknown model {name!r}: use one of {known}, or describe it in the cluster file under "
        "`model:` with numLayers, hiddenSize, intermediateSize, numHeads, numKvHeads and dtype"
    )


MODEL_KEYS = ("name", "numLayers", "hiddenSize", "intermediateSize", "numHeads", "numKvHeads", "vocabSize", "dtype",
              "bytesPerLayer", "kvBytesPerTokenLayer")


def model_from_mapping(data: Mapping[str, Any]) -> ModelSpec:
    """A model from a YAML mapping: `{name: llama3-8b}`, a Llama-style shape, or raw sizes.

    Raw sizes: numLayers, hiddenSize, bytesPerLayer, kvBytesPerTokenLayer (and dtype).
    """
    check_keys(data, MODEL_KEYS, "the model description")
    if set(data) <= {"name"}:
        return get_model(str(data.get("name", "")))
    if "bytesPerLayer" in data:
        try:
            return ModelSpec(name=str(data.get("name", "custom")), num_layers=int(data["numLayers"]),
                             hidden_size=int(data["hiddenSize"]), bytes_per_layer=float(data["bytesPerLayer"]),
                             kv_bytes_per_token_layer=float(data["kvBytesPerTokenLayer"]),
                             dtype=str(data.get("dtype", "float16")))
        except KeyError as missing:
            raise PlanningError(f"model description lacks {missing}: with bytesPerLayer also give numLayers, "
                                "hiddenSize and kvBytesPerTokenLayer") from None
    try:
        return llama_like(
            str(data["name"]),
            num_layers=int(data["numLayers"]),
            hidden_size=int(data["hiddenSize"]),
            intermediate_size=int(data["intermediateSize"]),
            num_heads=int(data["numHeads"]),
            num_kv_heads=int(data.get("numKvHeads", data["numHeads"])),
            vocab_size=int(data.get("vocabSize", 32000)),
            dtype=str(data.get("dtype", "float16")),
        )
    except KeyError as missing:
        raise PlanningError(f"model description lacks {missing}: give numLayers, hiddenSize, "
                            "intermediateSize, numHeads (and optionally numKvHeads, vocabSize, dtype)") from None
