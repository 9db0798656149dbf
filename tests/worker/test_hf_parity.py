"""Logits equal transformers' own forward for checkpoints that transformers writes.

Tiny random Llama (GQA, llama3 RoPE scaling, attention and MLP biases, sharded), Qwen2 (q/k/v
biases, tied embeddings) and Mistral models are saved by the installed transformers (5.x
config layout), one also rewritten to the 4.x layout, one in bfloat16; the project's reference
path must give transformers' logits at every position. Weights are drawn at full scale (not
transformers' 0.02 init) so that a missing bias or a wrong rotation moves logits by far more
than the tolerance.
"""

import json
import shutil
from pathlib import Path

import pytest
import torch
from hf_builders import SHAPE, build
from transformers import LlamaForCausalLM, PreTrainedModel

from helix_worker.engine.reference import ReferenceModel, causal_attention
from helix_worker.errors import ServingError
from helix_worker.model.config import ModelConfig, load_model_config
from helix_worker.model.tokenizer import stop_ids

IDS = torch.randint(0, SHAPE["vocab_size"], (40,), generator=torch.Generator().manual_seed(1))


def ours(checkpoint: Path, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Float32 logits [T, vocab] of the reference path at every position of IDS."""
    model = ReferenceModel(checkpoint, dtype=dtype).model
    hidden = model.run(IDS, torch.arange(len(IDS)), lambda _: causal_attention, 0, model.config.num_layers)
    return model.logits(hidden)


def theirs(model: PreTrainedModel) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS[None]).logits[0].float()


def to_4x_layout(directory: Path) -> None:
    """Rewrite config.json as transformers 4.x wrote it: rope_theta, rope_scaling, torch_dtype."""
    data = json.loads((directory / "config.json").read_text())
    rope = data.pop("rope_parameters")
    data["rope_theta"] = rope.pop("rope_theta")
    data["rope_scaling"] = None if rope["rope_type"] == "default" else rope
    data["torch_dtype"] = data.pop("dtype")
    (directory / "config.json").write_text(json.dumps(data))


@pytest.mark.parametrize("kind", ["llama", "llama-linear-rope", "qwen2", "mistral"])
def test_float32_logits_equal_transformers(kind: str, tmp_path: Path) -> None:
    model = build(kind)
    model.save_pretrained(tmp_path, max_shard_size="40KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    config = load_model_config(tmp_path)
    assert (config.qkv_bias, config.o_bias, config.mlp_bias, config.tie_word_embeddings) == {
        "llama": (True, True, True, False), "llama-linear-rope": (False, False, False, False),
        "qwen2": (True, False, False, True),
        "mistral": (False, False, False, False)}[kind]
    torch.testing.assert_close(ours(tmp_path), theirs(model), atol=1e-4, rtol=0)


def test_the_4x_config_layout_reads_the_same(tmp_path: Path) -> None:
    model = build("llama")
    model.save_pretrained(tmp_path / "v5")
    shutil.copytree(tmp_path / "v5", tmp_path / "v4")
    to_4x_layout(tmp_path / "v4")
    assert "rope_parameters" not in (tmp_path / "v4" / "config.json").read_text()
    assert load_model_config(tmp_path / "v4") == load_model_config(tmp_path / "v5")
    assert load_model_config(tmp_path / "v4").rope_scaling["rope_type"] == "llama3"
    torch.testing.assert_close(ours(tmp_path / "v4"), theirs(model), atol=1e-4, rtol=0)


def test_bfloat16_checkpoint(tmp_path: Path) -> None:
    build("llama").to(torch.bfloat16).save_pretrained(tmp_path)
    to_4x_layout(tmp_path)
    assert load_model_config(tmp_path).dtype == "bfloat16"
    as_float = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    torch.testing.assert_close(ours(tmp_path, torch.float32), theirs(as_float), atol=1e-4, rtol=0)
    # In bfloat16 each side rounds in its own order (oneDNN's packed matmuls here): a few ulps apart.
    native = LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    torch.testing.assert_close(ours(tmp_path), theirs(native), atol=0.125, rtol=0.02)


def test_generation_config_eos_ids_are_the_front_ends_stop_ids(tmp_path: Path) -> None:
    model = build("mistral")
    model.generation_config.eos_token_id = [5, 9]
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["eos_token_id"] == 2
    assert stop_ids(load_model_config(tmp_path), None) == (5, 9)


@pytest.mark.parametrize("change, field", [
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"model_type": "mistral", "max_position_embeddings": 8192}, "sliding_window 4096"),  # Mistral's default
    ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 64, "max_window_layers": 1},
     "sliding_window 64"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0}}, "rope_parameters.rope_type"),
    ({"rope_scaling": {"type": "dynamic", "factor": 2.0}, "rope_theta": 10000.0}, "rope_parameters.rope_type"),
    ({"model_type": "gpt2"}, "model_type"),
    ({"hidden_size": None}, "hidden_size"),
])
def test_features_the_engine_lacks_are_refused_by_name(change: dict, field: str) -> None:
    data = {"model_type": "llama", **SHAPE} | change
    data = {k: v for k, v in data.items() if v is not None}
    with pytest.raises(ServingError, match=field):
        ModelConfig.from_dict(data)


def test_inactive_sliding_windows_are_accepted() -> None:
    """Off, no shorter than the context, or (Qwen2) only on layers from max_window_layers on, which this model lacks."""
    off = {"model_type": "qwen2", **SHAPE, "use_sliding_window": False, "sliding_window": 64}
    later = off | {"use_sliding_window": True, "max_window_layers": 2}
    qwen2 = [ModelConfig.from_dict(data) for data in (off, later)]
    mistral = ModelConfig.from_dict({"model_type": "mistral", **SHAPE, "sliding_window": 256})
    assert all(c.qkv_bias and not c.o_bias for c in qwen2) and mistral.max_position_embeddings == 256
