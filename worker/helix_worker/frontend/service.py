"""The generation service both API adapters call: text or token ids in, text pieces out.

It tokenizes, renders chat templates, applies stop strings and EOS, and detokenizes the
coordinator's token stream incrementally. KServe and OpenAI adapters only translate
their wire formats to `TextRequest` and `TextPiece`.

Tokenizing a prompt and rendering a chat take time that grows with the prompt, so they run
in a small thread pool, never on the event loop that streams every other request's tokens;
the per-token incremental decode is a few tokens' work and stays on the loop.
"""

import asyncio
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from helix_worker.errors import InvalidRequest
from helix_worker.frontend.coordinator import Coordinator, GenerationRequest
from helix_worker.frontend.text import StopMatcher, chat_messages
from helix_worker.model.tokenizer import StreamDecoder, Tokenizer
from helix_worker.protocol import SamplingParams

TOKENIZE_THREADS = 2


@dataclass(frozen=True)
class TextRequest:
    prompt: str | None = None
    prompt_ids: tuple[int, ...] | None = None
    messages: tuple[dict[str, Any], ...] | None = None
    tools: tuple[dict[str, Any], ...] | None = None
    max_tokens: int | None = None  # None: as many as the context (and the largest KV cache) leaves, as vLLM does
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    ignore_eos: bool = False


@dataclass(frozen=True)
class TextPiece:
    text: str
    token_ids: tuple[int, ...]
    logprobs: tuple[float, ...] = ()
    top_logprobs: tuple[tuple[tuple[int, float], ...], ...] = ()
    finish_reason: str | None = None


@dataclass(frozen=True)
class Completion:
    text: str
    token_ids: tuple[int, ...]
    prompt_tokens: int
    finish_reason: str
    logprobs: tuple[float, ...] = ()
    top_logprobs: tuple[tuple[tuple[int, float], ...], ...] = ()


class GenerationService:
    """`tokenizer_error` says why text cannot be served when `tokenizer` is None; token ids still can."""

    def __init__(self, coordinator: Coordinator, tokenizer: Tokenizer | None, model_name: str,
                 eos_token_ids: tuple[int, ...], tokenizer_error: str = "this model has no tokenizer.json") -> None:
        self.coordinator, self.tokenizer, self.model_name = coordinator, tokenizer, model_name
        self.eos_token_ids = eos_token_ids
        self.tokenizer_error = tokenizer_error
        self._pool = ThreadPoolExecutor(TOKENIZE_THREADS, thread_name_prefix="helix-tokenize")

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    def _text_tokenizer(self, what: str) -> Tokenizer:
        if self.tokenizer is None:
            raise InvalidRequest(f"{self.tokenizer_error}: {what}")
        return self.tokenizer

    def tokenize(self, request: TextRequest) -> tuple[int, ...]:
        """The prompt's ids: a chat rendered by its template, or a text prompt with the tokenizer's BOS."""
        if request.messages is not None:
            tokenizer = self._text_tokenizer("chat needs the tokenizer; send token ids to /v1/completions instead")
            text = tokenizer.render_chat(chat_messages(list(request.messages)),
                                         tools=list(request.tools) if request.tools else None)
            return tuple(tokenizer.encode(text, add_special=False))  # the template wrote the special tokens
        if request.prompt is None:
            raise InvalidRequest("give a prompt (text or token ids)")
        return tuple(self._text_tokenizer("send token ids instead of text").encode(request.prompt))

    async def prepare(self, request: TextRequest) -> GenerationRequest:
        """Validate fully before anything is streamed, so errors come back as one clear status."""
        if request.prompt_ids is not None:
            ids = tuple(request.prompt_ids)
        else:
            ids = await asyncio.get_running_loop().run_in_executor(self._pool, self.tokenize, request)
        generation = GenerationRequest(ids, request.max_tokens or self._room_after(len(ids)), request.sampling,
                                       () if request.ignore_eos else self.eos_token_ids)
        self.coordinator.validate(generation)
        vocab = self.coordinator.limits.vocab_size
        if bad := [t for t, _ in request.sampling.logit_bias if t >= vocab]:
            raise InvalidRequest(f"`logit_bias` token id {bad[0]} is outside the vocabulary [0, {vocab})")
        if request.stop:
            self._text_tokenizer("stop strings need the tokenizer; use stop token ids instead")
        return generation

    async def stream(self, request: TextRequest,
                     generation: GenerationRequest | None = None) -> AsyncGenerator[TextPiece, None]:
        """Text pieces as tokens arrive; the last piece carries the finish reason."""
        generation = generation or await self.prepare(request)
        decoder = StreamDecoder(self.tokenizer, generation.prompt_ids) if self.tokenizer else None
        stops = StopMatcher(request.stop)
        timeline = self.coordinator.timeline(generation)
        async with aclosing(self.coordinator.generate(generation, timeline)) as events:
            async for event in events:
                finish, text, hit = event.finish_reason, "", False
                if decoder is not None and event.token_id not in generation.stop_token_ids:
                    text, hit = stops.feed(decoder.feed(event.token_id))
                if hit:
                    finish = "stop"
                    timeline.finished(finish)  # the coordinator would count the close as an abort
                elif finish and decoder is not None:
                    tail, hit = stops.feed(decoder.flush())
                    text += tail if hit else tail + stops.flush()
                yield TextPiece(text, (event.token_id,), (event.logprob,), (event.top,), finish)
                if finish:
                    return

    def _room_after(self, prompt_tokens: int) -> int:
        """The default max_tokens: what the model's context and the largest pipeline's KV cache leave."""
        room = min(filter(None, (self.coordinator.limits.max_positions, self.coordinator.routes.largest_fit())))
        if prompt_tokens >= room:
            raise InvalidRequest(f"the prompt ({prompt_tokens} tokens) leaves no room to generate: at most "
                                 f"{room} tokens fit the model's context and KV cache")
        return room - prompt_tokens

    async def complete(self, request: TextRequest, generation: GenerationRequest | None = None) -> Completion:
        generation = generation or await self.prepare(request)
        texts: list[str] = []
        ids: list[int] = []
        logprobs: list[float] = []
        tops: list[tuple[tuple[int, float], ...]] = []
        finish = "length"
        async for piece in self.stream(request, generation):
            texts.append(piece.text)
            ids += piece.token_ids
            logprobs += piece.logprobs
            tops += piece.top_logprobs
            finish = piece.finish_reason or finish
        return Completion("".join(texts), tuple(ids), len(generation.prompt_ids), finish, tuple(logprobs), tuple(tops))

    def token_text(self, token_id: int) -> str:
        """One token as text, for logprob listings."""
        return str(token_id) if self.tokenizer is None else self.tokenizer.token_text(token_id)
