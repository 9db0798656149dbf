"""A reader for Hugging Face `tokenizer.json` files with a byte-level BPE model.

Covers GPT-2 / Llama 3 / Qwen2 style tokenizers: added (special) tokens matched first,
the pre-tokenizer split (the regex is translated to Python's `re`, which lacks `\\p{..}`),
the byte-to-unicode alphabet, merges by rank, and a BOS from a TemplateProcessing
post-processor. Streaming decode holds back bytes of an unfinished UTF-8 character.
"""

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from helix_worker.checkpoint import read_json
from helix_worker.errors import ServingError

GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
_CLASS_WITH_PROPS = re.compile(r"\[\^((?:\\.|[^\]\\])*)\]")


@lru_cache(maxsize=1)
def byte_alphabet() -> tuple[str, ...]:
    """GPT-2's reversible map from each byte to a printable unicode character."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return tuple(chars[b] for b in range(256))


def translate_regex(pattern: str) -> str:
    """Rewrite `\\p{L}` / `\\p{N}` (unsupported by `re`) into equivalent `re` classes."""
    def negated(match: re.Match) -> str:
        inner = match.group(1)
        if "\\p{L}" not in inner and "\\p{N}" not in inner:
            return match.group(0)
        rest = inner.replace("\\p{L}", "").replace("\\p{N}", "")
        return f"(?:[^{rest}\\w]|_)"

    pattern = _CLASS_WITH_PROPS.sub(negated, pattern)
    return pattern.replace("\\p{L}", "[^\\W\\d_]").replace("\\p{N}", "\\d")


@dataclass
class Tokenizer:
    vocab: dict[str, int]
    merges: dict[tuple[str, str], int]
    split: re.Pattern | None
    special: dict[str, int] = field(default_factory=dict)
    prefix_ids: tuple[int, ...] = ()
    ignore_merges: bool = False
    chat_template: str | None = None
    eos_token: str | None = None

    def __post_init__(self) -> None:
        self.id_to_token = {i: t for t, i in self.vocab.items()} | {i: t for t, i in self.special.items()}
        self._byte_of = {c: b for b, c in enumerate(byte_alphabet())}
        self._special_re = (re.compile("|".join(re.escape(s) for s in sorted(self.special, key=len, reverse=True)))
                            if self.special else None)
        self._cache: dict[str, tuple[int, ...]] = {}

    @property
    def vocab_size(self) -> int:
        return max(self.id_to_token) + 1

    @property
    def eos_token_id(self) -> int | None:
        return self.special.get(self.eos_token) if self.eos_token else None

    def encode(self, text: str, *, add_special: bool = True) -> list[int]:
        ids = list(self.prefix_ids) if add_special else []
        pos = 0
        for match in self._special_re.finditer(text) if self._special_re else ():
            ids += self._encode_plain(text[pos:match.start()])
            ids.append(self.special[match.group(0)])
            pos = match.end()
        return ids + self._encode_plain(text[pos:])

    def decode(self, ids: list[int], *, skip_special: bool = True) -> str:
        return self.decode_bytes(ids, skip_special=skip_special).decode("utf-8", errors="replace")

    def decode_bytes(self, ids: list[int], *, skip_special: bool = True) -> bytes:
        out = bytearray()
        for i in ids:
            token = self.id_to_token.get(int(i))
            if token is None:
                continue
            if token in self.special:
                if not skip_special:
                    out += token.encode()
                continue
            out += bytes(self._byte_of[c] for c in token if c in self._byte_of)
        return bytes(out)

    def _encode_plain(self, text: str) -> list[int]:
        if not text:
            return []
        words = self.split.findall(text) if self.split else [text]
        ids: list[int] = []
        for word in words:
            if word not in self._cache:
                mapped = "".join(byte_alphabet()[b] for b in word.encode("utf-8"))
                self._cache[word] = tuple(self.vocab[t] for t in self._bpe(mapped))
            ids += self._cache[word]
        return ids

    def _bpe(self, word: str) -> list[str]:
        if self.ignore_merges and word in self.vocab:
            return [word]
        parts = list(word)
        while len(parts) > 1:
            ranked = [(self.merges[pair], pair) for pair in zip(parts, parts[1:]) if pair in self.merges]
            if not ranked:
                break
            parts = merge_pair(parts, *min(ranked)[1])
        return parts


def merge_pair(parts: list[str], a: str, b: str) -> list[str]:
    """Replace every adjacent (a, b) in `parts` by their concatenation, left to right."""
    out, i = [], 0
    while i < len(parts):
        if i + 1 < len(parts) and parts[i] == a and parts[i + 1] == b:
            out.append(a + b)
            i += 2
        else:
            out.append(parts[i])
            i += 1
    return out


class StreamDecoder:
    """Turns generated ids into text pieces, never splitting a UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._pending = b""

    def feed(self, token_id: int) -> str:
        self._pending += self.tokenizer.decode_bytes([token_id])
        for cut in range(len(self._pending), max(len(self._pending) - 4, -1), -1):
            try:
                text = self._pending[:cut].decode("utf-8")
            except UnicodeDecodeError:
                continue
            self._pending = self._pending[cut:]
            return text
        return ""

    def flush(self) -> str:
        text, self._pending = self._pending.decode("utf-8", errors="replace"), b""
        return text


def load_tokenizer(directory: Path) -> Tokenizer:
    """Read `tokenizer.json` (and `tokenizer_config.json` for the chat template and EOS)."""
    data = read_json(Path(directory) / "tokenizer.json", f"{directory} has no tokenizer.json: give token ids "
                     "instead of text, or add the model's tokenizer.json")
    config_path = Path(directory) / "tokenizer_config.json"
    config = read_json(config_path, "") if config_path.exists() else {}
    return tokenizer_from_dict(data, config)


def tokenizer_from_dict(data: dict[str, Any], config: dict[str, Any] | None = None) -> Tokenizer:
    config = config or {}
    model = data.get("model") or {}
    if model.get("type") != "BPE" or not _uses_byte_level(data.get("pre_tokenizer")):
        raise ServingError("only byte-level BPE tokenizer.json files are supported (GPT-2, Llama 3, Qwen2 style); "
                           "this one is " + str(model.get("type")) + " with pre-tokenizer "
                           + str((data.get("pre_tokenizer") or {}).get("type")))
    merges = {}
    for rank, merge in enumerate(model.get("merges") or []):
        pair = tuple(merge.split(" ", 1)) if isinstance(merge, str) else tuple(merge)
        merges[pair] = rank
    special = {t["content"]: int(t["id"]) for t in data.get("added_tokens") or []}
    eos = config.get("eos_token")
    return Tokenizer(
        vocab=dict(model["vocab"]),
        merges=merges,
        split=_split_pattern(data.get("pre_tokenizer")),
        special=special,
        prefix_ids=_prefix_ids(data.get("post_processor"), special),
        ignore_merges=bool(model.get("ignore_merges", False)),
        chat_template=config.get("chat_template") if isinstance(config.get("chat_template"), str) else None,
        eos_token=eos.get("content") if isinstance(eos, dict) else eos,
    )


def _flatten(node: dict[str, Any] | None, key: str) -> list[dict[str, Any]]:
    if not node:
        return []
    if node.get("type") == "Sequence":
        return [item for child in node.get(key, []) for item in _flatten(child, key)]
    return [node]


def _uses_byte_level(pre: dict[str, Any] | None) -> bool:
    return any(p.get("type") == "ByteLevel" for p in _flatten(pre, "pretokenizers"))


def _split_pattern(pre: dict[str, Any] | None) -> re.Pattern | None:
    for step in _flatten(pre, "pretokenizers"):
        if step.get("type") == "Split":
            pattern = step.get("pattern", {})
            raw = pattern.get("Regex") or re.escape(pattern.get("String", " "))
            try:
                return re.compile(translate_regex(raw))
            except re.error as err:
                raise ServingError(f"tokenizer.json split pattern is not usable here: {err}") from None
        if step.get("type") == "ByteLevel" and step.get("use_regex", True):
            return re.compile(translate_regex(GPT2_SPLIT))
    return None


def _prefix_ids(post: dict[str, Any] | None, special: dict[str, int]) -> tuple[int, ...]:
    for step in _flatten(post, "processors"):
        if step.get("type") != "TemplateProcessing":
            continue
        ids = []
        for item in step.get("single", []):
            if "Sequence" in item:
                break
            token = item.get("SpecialToken", {}).get("id")
            if token in special:
                ids.append(special[token])
        return tuple(ids)
    return ()
