"""The generation service both API adapters call: text or token ids in, text pieces out.

It tokenizes, renders chat templates, applies stop strings and EOS, and detokenizes the
coordinator's token stream incrementally. KServe and OpenAI adapters only translate
their wire formats to `TextRequest` and `TextPiece`.
"""

from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from helix_worker.errors import InvalidRequest
from helix_worker.frontend.coordinator import Coordinator, GenerationRequest
from helix_worker.frontend.text import StopMatcher, render_chat
from helix_worker.protocol import SamplingParams
from helix_worker.tokenizer import StreamDecoder, Tokenizer


@dataclass(frozen=True)
class TextRequest:
    prompt: str | None = None
    prompt_ids: tuple[int, ...] | None = None
    messages: tuple[dict, ...] | None = None
    max_tokens: int = 16
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
    def __init__(self, coordinator: Coordinator, tokenizer: Tokenizer | None, model_name: str,
                 eos_token_ids: tuple[int, ...]) -> None:
        self.coordinator, self.tokenizer, self.model_name = coordinator, tokenizer, model_name
        self.eos_token_ids = eos_token_ids

    def prompt_ids(self, request: TextRequest) -> tuple[int, ...]:
        if request.prompt_ids is not None:
            return tuple(request.prompt_ids)
        if self.tokenizer is None:
            raise InvalidRequest("this model has no tokenizer.json: send token ids instead of text")
        if request.messages is not None:
            return tuple(self.tokenizer.encode(render_chat(self.tokenizer, list(request.messages)), add_special=False))
        if request.prompt is None:
            raise InvalidRequest("give a prompt (text or token ids)")
        return tuple(self.tokenizer.encode(request.prompt))

    def prepare(self, request: TextRequest) -> GenerationRequest:
        """Validate fully before anything is streamed, so errors come back as one clear status."""
        generation = GenerationRequest(self.prompt_ids(request), request.max_tokens, request.sampling,
                                       () if request.ignore_eos else self.eos_token_ids)
        self.coordinator.validate(generation)
        if request.stop and self.tokenizer is None:
            raise InvalidRequest("stop strings need the model's tokenizer.json; use stop token ids instead")
        return generation

    async def stream(self, request: TextRequest, generation: GenerationRequest | None = None) -> AsyncIterator[TextPiece]:
        """Text pieces as tokens arrive; the last piece carries the finish reason."""
        generation = generation or self.prepare(request)
        decoder = StreamDecoder(self.tokenizer) if self.tokenizer else None
        stops = StopMatcher(request.stop)
        async with aclosing(self.coordinator.generate(generation)) as events:
            async for event in events:
                finish, text, hit = event.finish_reason, "", False
                if decoder is not None and event.token_id not in generation.stop_token_ids:
                    text, hit = stops.feed(decoder.feed(event.token_id))
                if hit:
                    finish = "stop"
                elif finish and decoder is not None:
                    tail, hit = stops.feed(decoder.flush())
                    text += tail if hit else tail + stops.flush()
                yield TextPiece(text, (event.token_id,), (event.logprob,), (event.top,), finish)
                if finish:
                    return

    async def complete(self, request: TextRequest) -> Completion:
        generation = self.prepare(request)
        texts, ids, logprobs, tops, finish = [], [], [], [], "length"
        async for piece in self.stream(request, generation):
            texts.append(piece.text)
            ids += piece.token_ids
            logprobs += piece.logprobs
            tops += piece.top_logprobs
            finish = piece.finish_reason or finish
        return Completion("".join(texts), tuple(ids), len(generation.prompt_ids), finish, tuple(logprobs), tuple(tops))

    def token_text(self, token_id: int) -> str:
        """One token as text, for logprob listings (bytes of a partial character come out as escapes)."""
        if self.tokenizer is None:
            return str(token_id)
        raw = self.tokenizer.decode_bytes([token_id], skip_special=False)
        return raw.decode("utf-8", errors="backslashreplace")
