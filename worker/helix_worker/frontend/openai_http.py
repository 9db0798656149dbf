"""OpenAI-compatible HTTP adapter (aiohttp): /v1/models, /v1/completions, /v1/chat/completions.

Streaming answers are server-sent events ending in `data: [DONE]`. Only n=1 is served;
`top_k` and `ignore_eos` are accepted as extensions, as vLLM does. Errors use OpenAI's
`{"error": {...}}` body with 400 (bad request), 404 (unknown model) or 503 (no capacity).
"""

import json
import time
import uuid
from contextlib import aclosing
from typing import Any

from aiohttp import web

from helix_worker.errors import InvalidRequest, ServingError, Unavailable
from helix_worker.frontend.coordinator import GenerationRequest
from helix_worker.frontend.service import GenerationService, TextPiece, TextRequest
from helix_worker.protocol import SamplingParams


def add_openai_routes(app: web.Application, service: GenerationService) -> None:
    api = _OpenAI(service)
    app.router.add_get("/v1/models", api.models)
    app.router.add_post("/v1/completions", api.completions)
    app.router.add_post("/v1/chat/completions", api.chat)


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


def error_response(err: Exception) -> web.Response:
    if isinstance(err, InvalidRequest):
        return _error(400, str(err), "invalid_request_error")
    if isinstance(err, Unavailable):
        return _error(503, str(err), "unavailable")
    return _error(500, str(err), "server_error")


def parse_body(body: Any, *, chat: bool) -> TextRequest:
    """OpenAI request fields -> TextRequest; anything malformed is an InvalidRequest."""
    if not isinstance(body, dict):
        raise InvalidRequest("the request body must be a JSON object")
    if int(body.get("n", 1)) != 1:
        raise InvalidRequest("only n=1 is supported")
    if body.get("echo"):
        raise InvalidRequest("echo is not supported")
    stop = body.get("stop") or ()
    stop = (stop,) if isinstance(stop, str) else tuple(stop)
    if not all(isinstance(s, str) for s in stop):
        raise InvalidRequest("stop must be a string or a list of strings")
    try:
        logprobs = body.get("top_logprobs", 1 if body.get("logprobs") is True else 0) if chat else body.get("logprobs") or 0
        sampling = SamplingParams(temperature=float(body.get("temperature", 1.0)), top_p=float(body.get("top_p", 1.0)),
                                  top_k=max(0, int(body.get("top_k", 0))),
                                  seed=None if body.get("seed") is None else int(body["seed"]), logprobs=int(logprobs))
        max_tokens = int(body.get("max_completion_tokens", body.get("max_tokens", 16)) if chat else body.get("max_tokens", 16))
    except (TypeError, ValueError) as err:
        raise InvalidRequest(f"bad sampling parameter: {err}") from None
    common = {"max_tokens": max_tokens, "sampling": sampling, "stop": stop, "ignore_eos": bool(body.get("ignore_eos", False))}
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages must be a non-empty list")
        return TextRequest(messages=tuple(messages), **common)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return TextRequest(prompt=prompt, **common)
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return TextRequest(prompt_ids=tuple(prompt), **common)
    raise InvalidRequest("prompt must be a string or a list of token ids (one prompt per request)")


class _OpenAI:
    def __init__(self, service: GenerationService) -> None:
        self.service = service

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.service.model_name, "object": "model", "created": 0, "owned_by": "helix"}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=True)

    async def _handle(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            body = await request.json()
        except ValueError as err:
            return _error(400, f"the body is not JSON: {err}", "invalid_request_error")
        model = body.get("model") if isinstance(body, dict) else None
        if model not in (None, self.service.model_name):
            return _error(404, f"model {model!r} does not exist; this server serves {self.service.model_name!r}",
                          "not_found_error")
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        try:
            text_request = parse_body(body, chat=chat)
            generation = self.service.prepare(text_request)
            if body.get("stream"):
                return await self._stream(request, text_request, generation, ident, chat, _include_usage(body))
            done = await self.service.complete(text_request)
        except ServingError as err:
            return error_response(err)
        wants_logprobs = text_request.sampling.logprobs > 0
        logprobs = self._logprobs(done.token_ids, done.logprobs, done.top_logprobs, chat) if wants_logprobs else None
        choice: dict[str, Any] = {"index": 0, "finish_reason": done.finish_reason, "logprobs": logprobs}
        choice |= {"message": {"role": "assistant", "content": done.text}} if chat else {"text": done.text}
        usage = {"prompt_tokens": done.prompt_tokens, "completion_tokens": len(done.token_ids),
                 "total_tokens": done.prompt_tokens + len(done.token_ids)}
        return web.json_response({"id": ident, "object": "chat.completion" if chat else "text_completion",
                                  "created": int(time.time()), "model": self.service.model_name,
                                  "choices": [choice], "usage": usage})

    def _logprobs(self, ids: tuple[int, ...], logprobs: tuple[float, ...],
                  tops: tuple[tuple[tuple[int, float], ...], ...], chat: bool) -> dict[str, Any]:
        """OpenAI's logprobs object: the chat form (`content` list) or the legacy completions form."""
        text = self.service.token_text
        if chat:
            return {"content": [{"token": text(t), "logprob": lp,
                                 "top_logprobs": [{"token": text(i), "logprob": v} for i, v in top]}
                                for t, lp, top in zip(ids, logprobs, tops)]}
        return {"tokens": [text(t) for t in ids], "token_logprobs": list(logprobs),
                "top_logprobs": [{text(i): v for i, v in top} for top in tops]}

    async def _stream(self, request: web.Request, text_request: TextRequest, generation: GenerationRequest,
                      ident: str, chat: bool, include_usage: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        frame = _chat_chunk if chat else _completion_chunk
        base: dict[str, Any] = {"id": ident, "created": int(time.time()), "model": self.service.model_name}
        if include_usage:
            base["usage"] = None  # OpenAI: null on every chunk but the last
        completion_tokens = 0
        try:
            if chat:
                await _send(response, base | {"object": "chat.completion.chunk", "choices": [
                    {"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
            wants_logprobs = text_request.sampling.logprobs > 0
            async with aclosing(self.service.stream(text_request, generation)) as pieces:
                async for piece in pieces:
                    completion_tokens += len(piece.token_ids)
                    data = base | frame(piece)
                    if wants_logprobs:
                        data["choices"][0]["logprobs"] = self._logprobs(piece.token_ids, piece.logprobs,
                                                                        piece.top_logprobs, chat)
                    await _send(response, data)
            if include_usage:
                prompt_tokens = len(generation.prompt_ids)
                await _send(response, base | {"object": frame(TextPiece("", ()))["object"], "choices": [], "usage": {
                    "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens}})
        except ServingError as err:
            await _send(response, {"error": {"message": str(err), "type": type(err).__name__}})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _include_usage(body: dict[str, Any]) -> bool:
    """`stream_options.include_usage`: a last chunk with the token counts, as OpenAI sends it."""
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise InvalidRequest("stream_options must be an object whose include_usage is true or false")
    return options.get("include_usage", False)


def _completion_chunk(piece: TextPiece) -> dict[str, Any]:
    return {"object": "text_completion",
            "choices": [{"index": 0, "text": piece.text, "finish_reason": piece.finish_reason, "logprobs": None}]}


def _chat_chunk(piece: TextPiece) -> dict[str, Any]:
    return {"object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {"content": piece.text}, "finish_reason": piece.finish_reason}]}


async def _send(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(data).encode() + b"\n\n")
