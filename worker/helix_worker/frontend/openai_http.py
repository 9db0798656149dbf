"""OpenAI-compatible HTTP adapter (aiohttp): /v1/models[/{id}], /v1/completions, /v1/chat/completions.

Streaming answers are server-sent events ending in `data: [DONE]`. n > 1 runs n requests
through the pipelines at once (with a seed, choice i uses seed + i, so they differ). Errors use
OpenAI's `{"error": {...}}` body with 400 (bad request, naming the field), 404 (unknown model),
408 (body too slow), 413 (body too large) or 503 (no capacity); `openai_request` checks every
field first.
"""

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, Awaitable, Iterable
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from helix_worker.errors import InvalidRequest, ServingError, Unavailable
from helix_worker.frontend import validation as check
from helix_worker.frontend.coordinator import GenerationRequest
from helix_worker.frontend.openai_request import OpenAIRequest, parse_body
from helix_worker.frontend.service import Completion, GenerationService, TextPiece
from helix_worker.frontend.tool_calls import tool_calls

log = logging.getLogger(__name__)

def add_openai_routes(app: web.Application, service: GenerationService, *, body_seconds: float) -> None:
    """The routes, and JSON error bodies for every error of `app` (see `json_errors`)."""
    api = _OpenAI(service, body_seconds)
    app.middlewares.append(json_errors)
    app.router.add_get("/v1/models", api.models)
    app.router.add_get("/v1/models/{id}", api.model)
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


async def read_body(request: web.Request, seconds: float) -> bytes:
    """The whole body (aiohttp refuses one over client_max_size with 413), or 408 if the client
    takes longer than `seconds` to send it."""
    try:
        return await asyncio.wait_for(request.read(), seconds)
    except TimeoutError:
        raise web.HTTPRequestTimeout(text=f"the request body did not arrive within {seconds:g}s") from None


class _OpenAI:
    def __init__(self, service: GenerationService, body_seconds: float) -> None:
        self.service, self.body_seconds = service, body_seconds

    def _card(self) -> dict[str, Any]:
        return {"id": self.service.model_name, "object": "model", "created": 0, "owned_by": "helix"}

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [self._card()]})

    async def model(self, request: web.Request) -> web.Response:
        if request.match_info["id"] != self.service.model_name:
            return _error(404, f"model {request.match_info['id']!r} does not exist; this server serves "
                          f"{self.service.model_name!r}", "not_found_error")
        return web.json_response(self._card())

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=False)

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._handle(request, chat=True)

    async def _handle(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        try:
            raw = await read_body(request, self.body_seconds)
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
            parsed = parse_body(body, chat=chat)
            generations = _choices(await self.service.prepare(parsed.text), parsed.n)
            if parsed.stream:
                return await self._stream(request, parsed, generations, ident, chat)
            done = await _all(self.service.complete(parsed.text, g) for g in generations)
        except ServingError as err:
            return error_response(err)
        wants_logprobs = parsed.text.sampling.logprobs > 0
        choices = []
        for index, one in enumerate(done):
            logprobs = self._logprobs(one.token_ids, one.logprobs, one.top_logprobs, chat) if wants_logprobs else None
            choice: dict[str, Any] = {"index": index, "finish_reason": one.finish_reason, "logprobs": logprobs}
            choice |= {"message": {"role": "assistant", "content": one.text}} if chat else {"text": one.text}
            if parsed.tool_choice and (calls := tool_calls(one.text, parsed.tool_choice)):
                choice["message"] = {"role": "assistant", "content": "", "tool_calls": calls}  # as vLLM answers
                if parsed.tool_choice.name is None and one.finish_reason == "stop":
                    choice["finish_reason"] = "tool_calls"
            choices.append(choice)
        completion_tokens = sum(len(one.token_ids) for one in done)
        usage = {"prompt_tokens": done[0].prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": done[0].prompt_tokens + completion_tokens}
        return web.json_response({"id": ident, "object": "chat.completion" if chat else "text_completion",
                                  "created": int(time.time()), "model": self.service.model_name,
                                  "choices": choices, "usage": usage})

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

    async def _stream(self, request: web.Request, parsed: OpenAIRequest, generations: list[GenerationRequest],
                      ident: str, chat: bool) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        frame = _chat_chunk if chat else _completion_chunk
        base: dict[str, Any] = {"id": ident, "created": int(time.time()), "model": self.service.model_name}
        if parsed.include_usage:
            base["usage"] = None  # OpenAI: null on every chunk but the last
        completion_tokens = 0
        try:
            if chat:
                for index in range(len(generations)):
                    await _send(response, base | {"object": "chat.completion.chunk", "choices": [
                        {"index": index, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]})
            wants_logprobs = parsed.text.sampling.logprobs > 0
            async with aclosing(self._pieces(parsed, generations)) as pieces:
                async for index, piece in pieces:
                    completion_tokens += len(piece.token_ids)
                    data = base | frame(piece, index)
                    if wants_logprobs:
                        data["choices"][0]["logprobs"] = self._logprobs(piece.token_ids, piece.logprobs,
                                                                        piece.top_logprobs, chat)
                    await _send(response, data)
            if parsed.include_usage:
                prompt_tokens = len(generations[0].prompt_ids)
                await _send(response, base | {"object": frame(TextPiece("", ()), 0)["object"], "choices": [],
                                              "usage": {"prompt_tokens": prompt_tokens,
                                                        "completion_tokens": completion_tokens,
                                                        "total_tokens": prompt_tokens + completion_tokens}})
        except ServingError as err:
            await _send(response, {"error": {"message": str(err), "type": type(err).__name__}})
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _pieces(self, parsed: OpenAIRequest,
                      generations: list[GenerationRequest]) -> AsyncGenerator[tuple[int, TextPiece], None]:
        """(choice index, piece) of every choice as they come; the first error ends them all."""
        if len(generations) == 1:
            async with aclosing(self.service.stream(parsed.text, generations[0])) as pieces:
                async for piece in pieces:
                    yield 0, piece
            return
        out: asyncio.Queue[tuple[int, TextPiece] | BaseException | None] = asyncio.Queue()

        async def run(index: int, generation: GenerationRequest) -> None:
            try:
                async with aclosing(self.service.stream(parsed.text, generation)) as pieces:
                    async for piece in pieces:
                        out.put_nowait((index, piece))
                out.put_nowait(None)
            except Exception as err:  # a ServingError becomes the stream's error event; a bug propagates
                out.put_nowait(err)

        tasks = [asyncio.create_task(run(i, g)) for i, g in enumerate(generations)]
        try:
            running = len(tasks)
            while running:
                item = await out.get()
                if item is None:
                    running -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def _choices(generation: GenerationRequest, n: int) -> list[GenerationRequest]:
    """n requests for n choices; with a seed, choice i draws with seed + i (wrapped) so they differ."""
    seed = generation.sampling.seed
    if n == 1 or seed is None:
        return [generation] * n
    return [replace(generation, sampling=replace(generation.sampling, seed=(seed + i) % (check.SEED_MAX + 1)))
            for i in range(n)]


async def _all(calls: Iterable[Awaitable[Completion]]) -> list[Completion]:
    """Every completion, or the first error with the others cancelled (their KV freed at once)."""
    tasks = [asyncio.ensure_future(call) for call in calls]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()


def _completion_chunk(piece: TextPiece, index: int) -> dict[str, Any]:
    return {"object": "text_completion", "choices": [
        {"index": index, "text": piece.text, "finish_reason": piece.finish_reason, "logprobs": None}]}


def _chat_chunk(piece: TextPiece, index: int) -> dict[str, Any]:
    return {"object": "chat.completion.chunk", "choices": [
        {"index": index, "delta": {"content": piece.text}, "finish_reason": piece.finish_reason}]}


async def _send(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(data).encode() + b"\n\n")
