"""`helix model init`: a small random-weight Llama checkpoint in the real Hugging Face layout.

config.json, model.safetensors (or shards with model.safetensors.index.json), and a
byte-level BPE tokenizer.json trained by Hugging Face `tokenizers` on a short built-in text,
so the same loader and tokenizer code serve this demo and real checkpoints.
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer

from helix_worker.model.checkpoint import INDEX_FILE, SINGLE_FILE, tensor_names
from helix_worker.model.config import ModelConfig

SPECIAL_TOKENS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header|>", "<|end_header|>")
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|start_header|>{{ message['role'] }}<|end_header|>"
    "{{ message['content'] }}<|end_of_text|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header|>assistant<|end_header|>{% endif %}"
)
_CORPUS = (
    "Helix serves large language models over heterogeneous GPU clusters. The planner places layers "
    "so that the max flow through the cluster is largest, and each request follows a pipeline drawn "
    "from that flow. The quick brown fox jumps over the lazy dog. Tokens stream back to the client "
    "as they are generated, one step at a time, through every stage of the pipeline."
)


@dataclass(frozen=True)
class DemoModel:
    """Shape of the demo model; the defaults keep CI fast on two CPU cores."""

    hidden_size: int = 64
    intermediate_size: int = 176
    num_layers: int = 6
    num_heads: int = 4
    num_kv_heads: int = 2
    merges: int = 120
    max_position_embeddings: int = 2048
    dtype: str = "float32"
    qkv_bias: bool = False
    tie_word_embeddings: bool = False
    shards: int = 1
    seed: int = 0


def write_demo_checkpoint(directory: Path, spec: DemoModel = DemoModel()) -> ModelConfig:
    """Write tokenizer, config and random weights into `directory`; returns the config."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(spec.merges)
    config = ModelConfig(
        model_type="qwen2" if spec.qkv_bias else "llama", hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size, num_layers=spec.num_layers, num_heads=spec.num_heads,
        num_kv_heads=spec.num_kv_heads, head_dim=spec.hidden_size // spec.num_heads,
        vocab_size=tokenizer.get_vocab_size(), max_position_embeddings=spec.max_position_embeddings,
        tie_word_embeddings=spec.tie_word_embeddings, qkv_bias=spec.qkv_bias, dtype=spec.dtype,
        bos_token_id=_special_id(tokenizer, SPECIAL_TOKENS[0]),
        eos_token_ids=(_special_id(tokenizer, SPECIAL_TOKENS[1]),),
    )
    (directory / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": SPECIAL_TOKENS[0], "eos_token": SPECIAL_TOKENS[1], "chat_template": CHAT_TEMPLATE,
        "model_max_length": spec.max_position_embeddings,
    }, indent=2))
    _write_weights(directory, random_weights(config, spec.seed), spec.shards)
    return config


def random_weights(config: ModelConfig, seed: int) -> dict[str, torch.Tensor]:
    """Weights scaled so activations stay O(1) and logits are well separated (no near ties)."""
    gen = torch.Generator().manual_seed(seed)
    dtype = config.torch_dtype
    h, kv = config.hidden_size, config.num_kv_heads * config.head_dim

    def normal(*shape: int, std: float) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen) * std).to(dtype)

    def norm_weight() -> torch.Tensor:
        return (1.0 + 0.1 * torch.randn(h, generator=gen)).to(dtype)

    shapes = {"q": (config.num_heads * config.head_dim, h), "k": (kv, h), "v": (kv, h),
              "o": (h, config.num_heads * config.head_dim), "gate": (config.intermediate_size, h),
              "up": (config.intermediate_size, h), "down": (h, config.intermediate_size)}
    tensors = {"model.embed_tokens.weight": normal(config.vocab_size, h, std=1.0), "model.norm.weight": norm_weight()}
    if not config.tie_word_embeddings:
        tensors["lm_head.weight"] = normal(config.vocab_size, h, std=1.0)
    for layer in range(config.num_layers):
        for name in tensor_names(layer, qkv_bias=config.qkv_bias):
            kind = name.split(".")[-2].removesuffix("_proj")
            if name.endswith("layernorm.weight"):
                tensors[name] = norm_weight()
            elif name.endswith(".bias"):
                tensors[name] = normal(shapes[kind][0], std=0.1)
            else:
                rows, cols = shapes[kind]
                tensors[name] = normal(rows, cols, std=cols ** -0.5)
    return tensors


def _write_weights(directory: Path, tensors: dict[str, torch.Tensor], shards: int) -> None:
    """One file, or `shards` files split in Hugging Face's order (embedding, layers, norm, head), so
    each shard holds a run of consecutive layers, as a stage that fetches only its shards expects."""
    if shards <= 1:
        save_file(tensors, directory / SINGLE_FILE, metadata={"format": "pt"})
        return
    names = sorted(tensors, key=_hf_order)
    weight_map: dict[str, str] = {}
    for index in range(shards):
        part = names[len(names) * index // shards: len(names) * (index + 1) // shards]
        filename = f"model-{index + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n] for n in part}, directory / filename, metadata={"format": "pt"})
        weight_map |= {n: filename for n in part}
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index_document = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (directory / INDEX_FILE).write_text(json.dumps(index_document, indent=2))


def _hf_order(name: str) -> tuple[int, int]:
    """Sort key: embedding first, then layer by layer, then the final norm and the LM head."""
    if name.startswith("model.layers."):
        return 1, int(name.split(".")[2])
    return (0 if name.startswith("model.embed_tokens.") else 2), 0


def build_tokenizer(merges: int) -> Tokenizer:
    """GPT-2 style byte-level BPE: the 256 byte symbols, `merges` merges learned from the built-in
    text, then the special tokens; encoding puts the BOS first, as Llama 3's tokenizer does."""
    tokenizer = Tokenizer(BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tokenizer.train_from_iterator([_CORPUS], BpeTrainer(vocab_size=len(alphabet) + merges, initial_alphabet=alphabet,
                                                        show_progress=False))
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    bos = SPECIAL_TOKENS[0]
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                             special_tokens=[(bos, _special_id(tokenizer, bos))])
    return tokenizer


def _special_id(tokenizer: Tokenizer, token: str) -> int:
    """The id of a special token `build_tokenizer` added (it always adds all of SPECIAL_TOKENS)."""
    token_id = tokenizer.token_to_id(token)
    if token_id is None:
        raise ValueError(f"the tokenizer has no special token {token!r}")
    return token_id
