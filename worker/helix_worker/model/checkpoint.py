"""Read single tensors from a Hugging Face safetensors checkpoint, sharded or not.

A stage opens only the shards that hold its tensors and reads them one name at a time
(`safe_open` + `get_tensor`), so its memory grows with its layer slice, not the model.
"""

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from helix_worker.errors import ServingError

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"


def tensor_names(layer: int, *, qkv_bias: bool) -> list[str]:
    """Every tensor name of one decoder layer in the Hugging Face Llama layout."""
    prefix = f"model.layers.{layer}."
    names = [prefix + "input_layernorm.weight", prefix + "post_attention_layernorm.weight"]
    names += [prefix + f"self_attn.{p}_proj.weight" for p in ("q", "k", "v", "o")]
    if qkv_bias:
        names += [prefix + f"self_attn.{p}_proj.bias" for p in ("q", "k", "v")]
    names += [prefix + f"mlp.{p}_proj.weight" for p in ("gate", "up", "down")]
    return names


class CheckpointReader:
    """Name -> shard map of a checkpoint directory; use as a context manager."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.weight_map = _weight_map(self.directory)
        self._stack = ExitStack()
        self._open: dict[str, Any] = {}

    def __enter__(self) -> "CheckpointReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self._open.clear()

    def has(self, name: str) -> bool:
        return name in self.weight_map

    def get(self, name: str, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """One tensor, converted to `dtype` on `device`; a missing name is one clear error."""
        shard = self.weight_map.get(name)
        if shard is None:
            raise ServingError(f"checkpoint {self.directory} has no tensor {name!r}: is it a Llama-family checkpoint?")
        if shard not in self._open:
            self._open[shard] = self._stack.enter_context(safe_open(self.directory / shard, framework="pt"))
        tensor: torch.Tensor = self._open[shard].get_tensor(name)
        return tensor.to(device=device, dtype=dtype)


def read_json(path: Path, missing: str) -> Any:
    """A checkpoint's JSON file; `missing` is the whole message when it does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ServingError(missing) from None
    except (OSError, json.JSONDecodeError) as err:
        raise ServingError(f"cannot read {path}: {err}") from None


def index_weight_map(index: Path) -> dict[str, str]:
    """Tensor name -> shard file, from a sharded checkpoint's index."""
    data = read_json(index, f"{index} vanished")
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict):
        raise ServingError(f"{index} has no weight_map")
    return dict(weight_map)


def _weight_map(directory: Path) -> dict[str, str]:
    index = directory / INDEX_FILE
    if index.exists():
        return index_weight_map(index)
    single = directory / SINGLE_FILE
    if not single.exists():
        raise ServingError(f"{directory} holds neither {SINGLE_FILE} nor {INDEX_FILE}")
    with safe_open(single, framework="pt") as handle:
        return {name: SINGLE_FILE for name in handle.keys()}  # noqa: SIM118 (safe_open has keys(), no __iter__)
