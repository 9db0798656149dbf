"""The model's tokenizer, as Hugging Face loads it: `tokenizers` for text and ids, transformers for chats.

Whatever `tokenizer.json` the `tokenizers` library reads (byte-level BPE, SentencePiece-style
Metaspace / ByteFallback, WordPiece...) is served unchanged, so ids match what vLLM and
transformers produce. transformers' own tokenizer class reads the side files
(`tokenizer_config.json`, `special_tokens_map.json`, `chat_template.jinja`) and renders chat
templates with its Jinja environment, so prompts equal `apply_chat_template`'s byte for byte.
"""

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as Backend
from tokenizers.decoders import DecodeStream
from transformers import PreTrainedTokenizerFast

from helix_worker.errors import InvalidRequest, ServingError
from helix_worker.model.config import ModelConfig

log = logging.getLogger(__name__)
CONTEXT_TOKENS = 4  # prompt tokens a stream decoder starts from, so a first word keeps its leading space


class Tokenizer:
    """Encode, decode and chat rendering over one loaded `tokenizer.json` and its config."""

    def __init__(self, hf: PreTrainedTokenizerFast) -> None:
        self.hf = hf
        self.backend: Backend = hf.backend_tokenizer

    @property
    def eos_token_id(self) -> int | None:
        eos: int | None = self.hf.eos_token_id
        return eos

    def encode(self, text: str, *, add_special: bool = True) -> list[int]:
        """Ids of `text`; `add_special` adds what the post-processor adds (usually a BOS)."""
        return self.backend.encode(text, add_special_tokens=add_special).ids

    def decode(self, ids: list[int], *, skip_special: bool = True) -> str:
        """Text of `ids`; added tokens that are not special are kept even when `skip_special`."""
        return self.backend.decode(list(ids), skip_special_tokens=skip_special)

    def token_text(self, token_id: int) -> str:
        """One token on its own, special or not; a part of a UTF-8 character, which decodes to U+FFFD
        whatever its bytes, is given as its vocabulary entry instead, so distinct ids stay distinct."""
        text = self.backend.decode([token_id], skip_special_tokens=False)
        return (self.backend.id_to_token(token_id) or text) if "\ufffd" in text else text

    def render_chat(self, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                    add_generation_prompt: bool = True) -> str:
        """The prompt text transformers' `apply_chat_template` renders for these messages."""
        if not self.hf.chat_template:
            raise InvalidRequest("this model has no chat template: use /v1/completions with a plain prompt")
        hf_tools: list[dict[Any, Any] | Callable[..., Any]] | None = None if tools is None else list(tools)
        try:
            rendered = self.hf.apply_chat_template(messages, tools=hf_tools,
                                                   add_generation_prompt=add_generation_prompt, tokenize=False)
        except Exception as err:  # jinja2 errors and the template's own raise_exception(...)
            raise InvalidRequest(f"the chat template failed on these messages: {err}") from None
        if not isinstance(rendered, str):  # tokenize=False renders text
            raise ServingError(f"the chat template rendered {type(rendered).__name__}, not text")
        return rendered


class StreamDecoder:
    """Generated ids to text pieces (`tokenizers`' DecodeStream): never half a UTF-8 character."""

    def __init__(self, tokenizer: Tokenizer, prompt_ids: tuple[int, ...] = ()) -> None:
        self.tokenizer = tokenizer
        context = list(prompt_ids[-CONTEXT_TOKENS:])
        while context and tokenizer.decode(context).startswith("\ufffd"):
            context.pop(0)  # starts inside a character: its stray bytes would garble every later piece
        self._stream = DecodeStream(ids=context, skip_special_tokens=True) if context else \
            DecodeStream(skip_special_tokens=True)
        self._held: list[int] = []

    def feed(self, token_id: int) -> str:
        """The text `token_id` completes; "" while a character is still incomplete."""
        piece = self._stream.step(self.tokenizer.backend, token_id)
        if piece is None:
            self._held.append(token_id)
            return ""
        self._held.clear()
        return piece

    def flush(self) -> str:
        """What is still held back when generation ends (an unfinished character as U+FFFD)."""
        text = self.tokenizer.decode(self._held) if self._held else ""
        self._held.clear()
        return text


def stop_ids(config: ModelConfig, tokenizer: Tokenizer | None) -> tuple[int, ...]:
    """The checkpoint's EOS ids (generation_config.json's, else config.json's) and the tokenizer's EOS, as vLLM
    stops (the front end ends a request on them; JSON grammars end with them)."""
    extra = () if tokenizer is None or tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
    return tuple(dict.fromkeys(config.eos_token_ids + extra))


def load_tokenizer(directory: Path) -> Tokenizer:
    """The tokenizer of a checkpoint directory; anything unreadable is one ServingError."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").exists():
        raise ServingError(f"{directory} has no tokenizer.json: give token ids instead of text, "
                           "or add the model's tokenizer.json")
    try:
        hf = PreTrainedTokenizerFast.from_pretrained(str(directory), local_files_only=True)
    except Exception as err:  # tokenizers raises plain Exceptions for malformed files
        raise ServingError(f"cannot load the tokenizer in {directory}: {err}") from None
    log.info("tokenizer from %s: %d tokens", directory, hf.backend_tokenizer.get_vocab_size(with_added_tokens=True))
    return Tokenizer(hf)
