"""Tokenizers and checkpoints made locally with Hugging Face libraries (no Hub here), for parity tests."""

import json
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
from tokenizers.models import BPE
from tokenizers.trainers import BpeTrainer
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}"
    "{% endif %}{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
TRAINING_TEXT = [
    "The quick brown fox jumps over the lazy dog. Tokens stream back to the client as they are generated.",
    "Helix serves large language models over heterogeneous GPU clusters, one pipeline at a time.",
    "Numbers like 12345, 3.14159 and 1,000,000 appear in text; so do dates such as 2025-03-14.",
    "naïve café résumé Ünïcödé façade — “quotes” and ‘apostrophes’ … ellipses",
    "def main():\n    return {'key': [1, 2, 3]}  # code with    indentation\n\n\ttabs",
]
CORPUS = [
    "Hello world", "", " ", "  leading and trailing  ", "multiple   spaces\there\t\ttabs\n\nand\r\nnewlines\n",
    "The quick brown fox jumps over the lazy dog.", "Numbers: 0 7 42 123 1234 12345 3.14159 -17 1e-9 1,000,000",
    "naïve café résumé Ünïcödé", "漢字かなカナ한국어 中文测试", "emoji 🙂👍🏽 family 👨‍👩‍👧 flag 🇯🇵",
    "mixed 漢🙂a1 ß∑≈ç√∫", "<|begin_of_text|>text after a special token<|eot_id|>",
    "inline<|eot_id|>special<|start_header_id|>user<|end_header_id|>", "a <tool_call> b</tool_call>",
    "don't won't it's we'll they've I'm you'd", "UPPER lower MiXeD", "x" * 200, "🙂" * 20,
    "\u200b zero width \ufeff bom", "tab\tsep\tvalues\n1\t2\t3", "    def f(x):\n        return x ** 2\n",
    "URL https://example.com/a?b=c&d=e#f", "e-mail someone@example.org", "trailing newline\n\n\n",
    "ア゙ combining é é", "العربية עברית हिन्दी ไทย", "\x00\x01 control \x7f chars",
]


def llama3_style_tokenizer(directory: Path, merges: int = 300) -> Path:
    """Byte-level BPE as Llama 3 ships it: Split regex, ByteLevel without regex, BOS added, a
    non-special added token, and a Llama-3 chat template in tokenizer_config.json."""
    tokenizer = Tokenizer(BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tokenizer.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tokenizer.train_from_iterator(TRAINING_TEXT, BpeTrainer(vocab_size=len(alphabet) + merges,
                                                            initial_alphabet=alphabet, show_progress=False))
    tokenizer.add_special_tokens(["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                  "<|end_header_id|>", "<|eot_id|>"])
    tokenizer.add_tokens([AddedToken("<tool_call>", special=False), AddedToken("</tool_call>", special=False)])
    bos = "<|begin_of_text|>"
    tokenizer.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                             special_tokens=[(bos, tokenizer.token_to_id(bos))])
    return _save(directory, tokenizer, {"bos_token": bos, "eos_token": "<|eot_id|>", "chat_template": LLAMA3_TEMPLATE})


def sentencepiece_style_tokenizer(directory: Path, merges: int = 300) -> Path:
    """Llama 2 / Mistral style: Metaspace ("▁") pre-tokenizer, BPE with byte fallback over
    <0x00>..<0xFF>, the SentencePiece decoder chain, <s> added in front."""
    trainer_tokenizer = Tokenizer(BPE())
    trainer_tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    trainer_tokenizer.train_from_iterator(TRAINING_TEXT, BpeTrainer(vocab_size=100 + merges, show_progress=False))
    trained = json.loads(trainer_tokenizer.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"<0x{b:02X}>": 3 + b for b in range(256)}
    for token in sorted(trained["vocab"], key=trained["vocab"].get):
        vocab.setdefault(token, len(vocab))
    merge_pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained["merges"]]
    tokenizer = Tokenizer(BPE(vocab, merge_pairs, unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.add_special_tokens(["<unk>", "<s>", "</s>"])
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                             special_tokens=[("<s>", 1)])
    return _save(directory, tokenizer, {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"})


def _save(directory: Path, tokenizer: Tokenizer, config: dict) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(directory / "tokenizer.json"))
    (directory / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False} | config))
    return directory


SHAPE = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
             vocab_size=128, max_position_embeddings=256)
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


def randomize(model: PreTrainedModel, seed: int) -> PreTrainedModel:
    """Norm weights near 1, biases 0.2, embeddings 1, projections 1/sqrt(fan-in)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            if name.endswith("norm.weight"):
                param.copy_(1 + 0.1 * noise)
            elif name.endswith(".bias"):
                param.copy_(0.2 * noise)
            else:
                param.copy_(noise if "embed" in name else noise * param.shape[1] ** -0.5)
    return model.eval()


def build(kind: str) -> PreTrainedModel:
    if kind == "llama":
        config = LlamaConfig(**SHAPE, attention_bias=True, mlp_bias=True, rope_parameters=dict(LLAMA3_ROPE))
        return randomize(LlamaForCausalLM(config), 0)
    if kind == "llama-linear-rope":
        config = LlamaConfig(**SHAPE, rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0})
        return randomize(LlamaForCausalLM(config), 3)
    if kind == "qwen2":
        return randomize(Qwen2ForCausalLM(Qwen2Config(**SHAPE, tie_word_embeddings=True)), 1)
    return randomize(MistralForCausalLM(MistralConfig(**SHAPE, sliding_window=None)), 2)
