"""Checkpoint loading and the layer-slice model: own tensors only, variants, dtypes, errors."""

from pathlib import Path

import pytest
import torch

from helix_worker.engine.model import LayerSlice
from helix_worker.engine.reference import ReferenceModel
from helix_worker.engine.rotary import inverse_frequencies
from helix_worker.engine.static_batch import StaticBatch
from helix_worker.errors import ServingError
from helix_worker.model.checkpoint import CheckpointReader, tensor_names
from helix_worker.model.config import load_model_config
from helix_worker.model.random_checkpoint import DemoModel, write_demo_checkpoint


@pytest.fixture
def read_names(monkeypatch) -> list[str]:
    """Names of every tensor read from a checkpoint (a spy on the real reader)."""
    names: list[str] = []
    real = CheckpointReader.get

    def spy(self, name, dtype, device):
        names.append(name)
        return real(self, name, dtype, device)

    monkeypatch.setattr(CheckpointReader, "get", spy)
    return names


def test_middle_slice_reads_only_its_layers(checkpoint: Path, read_names: list[str]) -> None:
    model = LayerSlice.load(checkpoint, 2, 4)
    assert sorted(read_names) == sorted(tensor_names(2, qkv_bias=False) + tensor_names(3, qkv_bias=False))
    assert model.embed is None and model.head is None and len(model.layers) == 2


def test_end_slices_add_embedding_and_head(checkpoint: Path, read_names: list[str]) -> None:
    LayerSlice.load(checkpoint, 0, 1)
    assert "model.embed_tokens.weight" in read_names and "lm_head.weight" not in read_names
    read_names.clear()
    last = LayerSlice.load(checkpoint, 5, 6)
    assert {"model.norm.weight", "lm_head.weight"} <= set(read_names)
    assert "model.embed_tokens.weight" not in read_names and last.is_last


def _pipeline_tokens(directory: Path, cut: int, prompt: list[int], steps: int, dtype=None) -> tuple[list[int], list]:
    """Greedy tokens through two in-process slices [0, cut) and [cut, L) with incremental KV."""
    config = load_model_config(directory)
    first = LayerSlice.load(directory, 0, cut, dtype=dtype)
    second = LayerSlice.load(directory, cut, config.num_layers, dtype=dtype)
    batches = [StaticBatch(m, 1, 64, block_tokens=4) for m in (first, second)]
    ids, tokens, logits = torch.tensor(prompt), [], []
    for _ in range(steps):
        hidden = batches[1].forward(batches[0].forward(ids, [len(ids)]), [len(ids)])
        logits.append(second.logits(hidden[-1:])[0])
        tokens.append(int(logits[-1].argmax()))
        ids = torch.tensor(tokens[-1:])
    return tokens, logits


@pytest.mark.parametrize("variant", [
    DemoModel(num_layers=3, qkv_bias=True),  # Qwen2-style biases
    DemoModel(num_layers=3, tie_word_embeddings=True),
    DemoModel(num_layers=3, num_kv_heads=1),  # multi-query attention
])
def test_variants_match_the_reference(tmp_path: Path, variant: DemoModel) -> None:
    write_demo_checkpoint(tmp_path, variant)
    reference = ReferenceModel(tmp_path).greedy([3, 1, 4, 1, 5], 6)
    tokens, logits = _pipeline_tokens(tmp_path, 1, [3, 1, 4, 1, 5], 6)
    assert tokens == reference.tokens
    assert all(torch.allclose(a, b, atol=1e-4, rtol=0) for a, b in zip(logits, reference.logits))


def test_tied_checkpoint_has_no_lm_head_tensor(tmp_path: Path) -> None:
    write_demo_checkpoint(tmp_path, DemoModel(num_layers=2, tie_word_embeddings=True))
    with CheckpointReader(tmp_path) as reader:
        assert not reader.has("lm_head.weight")
    last = LayerSlice.load(tmp_path, 1, 2)
    assert torch.equal(last.head, LayerSlice.load(tmp_path, 0, 1).embed)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_checkpoints_load_and_run(tmp_path: Path, dtype: str) -> None:
    write_demo_checkpoint(tmp_path, DemoModel(num_layers=2, dtype=dtype))
    model = LayerSlice.load(tmp_path, 0, 2)
    assert model.dtype == getattr(torch, dtype)
    tokens, logits = _pipeline_tokens(tmp_path, 1, [10, 20, 30], 3)
    assert len(tokens) == 3 and all(torch.isfinite(row).all() for row in logits)
    assert tokens == ReferenceModel(tmp_path).greedy([10, 20, 30], 3).tokens


def test_float32_override_of_a_bf16_checkpoint(tmp_path: Path) -> None:
    write_demo_checkpoint(tmp_path, DemoModel(num_layers=2, dtype="bfloat16"))
    assert LayerSlice.load(tmp_path, 0, 1, dtype=torch.float32).embed.dtype == torch.float32


def test_single_file_and_sharded_checkpoints_agree(tmp_path: Path) -> None:
    write_demo_checkpoint(tmp_path / "one", DemoModel(num_layers=2))
    write_demo_checkpoint(tmp_path / "three", DemoModel(num_layers=2, shards=3))
    assert (tmp_path / "three" / "model.safetensors.index.json").exists()
    assert not (tmp_path / "three" / "model.safetensors").exists()
    ids = [7, 8, 9]
    one, three = ReferenceModel(tmp_path / "one").next_logits(ids), ReferenceModel(tmp_path / "three").next_logits(ids)
    # Equal up to float rounding only: a tensor's offset in its file sets its (memory-mapped)
    # alignment, and with it how the matrix kernels group their sums.
    torch.testing.assert_close(one, three)
    assert torch.equal(one.argmax(-1), three.argmax(-1))


def test_llama3_rope_scaling_slows_only_low_frequencies() -> None:
    plain = inverse_frequencies(64, 500000.0, None)
    scaled = inverse_frequencies(64, 500000.0, {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    assert torch.equal(scaled[:4], plain[:4])  # high frequencies untouched
    assert torch.allclose(scaled[-1], plain[-1] / 8.0)  # lowest frequency divided by the factor
    with pytest.raises(ServingError, match="yarn"):
        inverse_frequencies(64, 10000.0, {"rope_type": "yarn", "factor": 2.0})


def test_bad_checkpoints_get_one_clear_error(tmp_path: Path, checkpoint: Path) -> None:
    with pytest.raises(ServingError, match="no config.json"):
        LayerSlice.load(tmp_path, 0, 1)
    with pytest.raises(ServingError, match="outside the model's 6 layers"):
        LayerSlice.load(checkpoint, 4, 8)
    (tmp_path / "config.json").write_text('{"model_type": "gpt2"}')
    with pytest.raises(ServingError, match="not supported"):
        LayerSlice.load(tmp_path, 0, 1)
