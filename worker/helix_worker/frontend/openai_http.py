"""OpenAI-compatible HTTP adapter (aiohttp): /v1/models, /v1/completions, /v1/chat/completions.

Streaming answers are server-sent events ending in `data: [DONE]`. Only n=1 is served;
`top_k` and `ignore_eos` are accepted as extensions, as vLLM does. Errors use OpenAI's
`{"error": {...}}` body with 400 (bad request), 404 (unknown model), 408 (body too slow),
413 (body too large) or 503 (no capacity); every field is checked by `validation` first.
"""

import asyncio
import json
import logging
import time
import uuid
from contextlib import aclosing
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from helix_worker.errors import InvalidRequest, ServingError, Unavailable
from helix_worker.frontend.coordinator import GenerationRequest
from helix_worker.frontend import validation as check
from helix_worker.frontend.service import GenerationService, TextPiece, TextRequest

log = logging.getLogger(__name__)

def add_openai_routes(app: web.Application, service: GenerationService, *, body_seconds: float) -> None:
    """The routes, and JSON error bodies for every error of `app` (see `json_errors`)."""
    api = _OpenAI(service, body_seconds)
    app.middlewares.append(json_errors)
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
    if check.integer("n", check.given(body, "n", 1), 1, check.MAX_TOKENS_MAX) != 1:
        raise InvalidRequest("only n=1 is supported")
    if check.flag("echo", check.given(body, "echo", False)):
        raise InvalidRequest("echo is not supported")
    check.flag("stream", check.given(body, "stream", False))
    if chat:
        wanted = 1 if check.flag("logprobs", check.given(body, "logprobs", False)) else 0
        logprobs = check.integer("top_logprobs", check.given(body, "top_logprobs", wanted), 0, check.MAX_LOGPROBS)
        max_tokens = check.given(body, "max_completion_tokens", check.given(body, "max_tokens", 16))
    else:
        logprobs = check.integer("logprobs", check.given(body, "logprobs", 0), 0, check.MAX_LOGPROBS)
        max_tokens = check.given(body, "max_tokens", 16)
    sampling = check.sampling(temperature=check.given(body, "temperature", 1.0), top_p=check.given(body, "top_p", 1.0),
                              top_k=check.given(body, "top_k", 0), seed=body.get("seed"), logprobs=logprobs)
    common = {"max_tokens": check.integer("max_tokens", max_tokens, 1, check.MAX_TOKENS_MAX), "sampling": sampling,
              "stop": check.stop_strings(body.get("stop")),
              "ignore_eos": check.flag("ignore_eos", check.given(body, "ignore_eos", False))}
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("messages must be a non-empty list")
        tools = body.get("tools")
        if tools is not None and not (isinstance(tools, list) and all(isinstance(t, dict) for t in tools)):
            raise InvalidRequest("tools must be a list of objects")
        return TextRequest(messages=tuple(messages), tools=tuple(tools) if tools else None, **common)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        return TextRequest(prompt=prompt, **common)
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt):
        return TextRequest(prompt_ids=tuple(prompt), **common)
    raise InvalidRequest("prompt must be a string or a list of token ids (one prompt per request)")


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """OpenAI's JSON error body for what aiohttp answers in plain text (unknown path, wrong
    method, 408 slow body, 413 body too large) and for a failure no handler caught."""
    try:
        return await handler(request)
    except web.HTTPException as err:
        if err.status < 400:
            raise
        response = _error(err.status, err.text or err.reason,
                          "not_found_error" if err.status == 404 else "invalid_request_error")
        if err.status in (408, 413):
            response.force_close()  # the rest of the body is not worth reading
        return response
    except ConnectionError:
        raise  # the client went away: there is no one to answer
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal error (logged by the server)", "server_error")


async def _read_body(request: web.Request, seconds: float) -> bytes:
    """The whole body (aiohttp refuses one over client_max_size with 413), or 408 if the client
    takes longer than `seconds` to send it."""
    try:
        return await asyncio.wait_for(request.read(), seconds)
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the request body did not arrive within {seconds:g}s") from None


class _OpenAI:
    def __init__(self, service: GenerationService, body_seconds: float) -> None:
        self.service, self.body_seconds = service, body_seconds

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [
            {"id": self.service.model_name, "object": "model", "created": 0, "owned_by": "helix"}]})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=True)

    async def _handle(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            raw = await _read_body(request, self.body_seconds)
            body = await asyncio.to_thread(check.loads, raw, "the body")  # megabytes take 0.1 s: off the loop
        except InvalidRequest as err:
            return error_response(err)
        model = body.get("model") if isinstance(body, dict) else None
        if model is not None and not isinstance(model, str):
            return _error(400, f"`model` must be a string, not {type(model).__name__}", "invalid_request_error")
        if model not in (None, self.service.model_name):
            return _error(404, f"model {model!r} does not exist; this server serves {self.service.model_name!r}",
                          "not_found_error")
        ident = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        try:
            text_request = parse_body(body, chat=chat)
            generation = await self.service.prepare(text_request)
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
