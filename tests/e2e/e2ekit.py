"""Clients of the served model for the end-to-end test: the real tritonclient (unary and
streaming), the OpenAI-compatible HTTP API, greedy references, and a load generator that
keeps requests in flight from threads while the test's event loop plays the cluster."""

import asyncio
import json
import queue
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient

from helix_worker.engine.reference import ReferenceModel
from helix_worker.model.tokenizer import load_tokenizer

PROMPTS = ("Helix serves large language models", "The quick brown fox", "Tokens stream back to the client",
           "The planner places layers so that", "one step at a time, through every stage",
           "heterogeneous GPU clusters")
MAX_TOKENS = 10
TIMEOUT = 120.0


@dataclass(frozen=True)
class Expected:
    """Greedy outputs of the single-process reference, per prompt."""

    tokens: dict[str, list[int]]
    texts: dict[str, str]
    prompt_ids: dict[str, list[int]]


def reference_outputs(checkpoint: Path, prompts: tuple[str, ...] = PROMPTS, max_tokens: int = MAX_TOKENS) -> Expected:
    tokenizer, model = load_tokenizer(checkpoint), ReferenceModel(checkpoint)
    ids = {p: tokenizer.encode(p) for p in prompts}
    tokens = {p: model.greedy(ids[p], max_tokens).tokens for p in prompts}
    return Expected(tokens, {p: tokenizer.decode(t) for p, t in tokens.items()}, ids)


def _inputs(prompt: str, max_tokens: int) -> list[grpcclient.InferInput]:
    text = grpcclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
    limit = grpcclient.InferInput("max_tokens", [1], "INT32")
    limit.set_data_from_numpy(np.array([max_tokens], dtype=np.int32))
    ignore = grpcclient.InferInput("ignore_eos", [1], "BOOL")
    ignore.set_data_from_numpy(np.array([True], dtype=np.bool_))
    return [text, limit, ignore]


def triton_unary(client: grpcclient.InferenceServerClient, model: str, prompt: str,
                 max_tokens: int = MAX_TOKENS) -> list[int]:
    result = client.infer(model, _inputs(prompt, max_tokens), client_timeout=TIMEOUT)
    return result.as_numpy("output_ids").tolist()


def triton_stream(client: grpcclient.InferenceServerClient, model: str, prompts: list[str],
                  max_tokens: int = MAX_TOKENS) -> dict[str, list[int]]:
    """Several requests on one ModelStreamInfer stream; token ids per prompt, one response per token."""
    responses: queue.Queue = queue.Queue()
    client.start_stream(callback=partial(lambda q, result, error: q.put((result, error)), responses))
    got: dict[str, list[int]] = {p: [] for p in prompts}
    try:
        for i, prompt in enumerate(prompts):
            client.async_stream_infer(model, _inputs(prompt, max_tokens), request_id=str(i))
        finals = set()
        while len(finals) < len(prompts):
            result, error = responses.get(timeout=TIMEOUT)
            if error is not None:
                raise error
            response = result.get_response()
            got[prompts[int(response.id)]] += result.as_numpy("output_ids").tolist()
            if response.parameters["triton_final_response"].bool_param:
                finals.add(response.id)
    finally:
        client.stop_stream()
    return got


def openai_completion(url: str, model: str, prompt: str, *, stream: bool = False,
                      max_tokens: int = MAX_TOKENS) -> str:
    """The completion's text (joined from server-sent events when streaming); a new connection each time."""
    body = json.dumps({"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": stream}).encode()
    request = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
        if not stream:
            return json.loads(response.read())["choices"][0]["text"]
        pieces = []
        for line in response:
            line = line.decode().strip()
            if line.startswith("data: ") and line != "data: [DONE]":
                pieces.append(json.loads(line.removeprefix("data: "))["choices"][0]["text"])
        return "".join(pieces)


@dataclass
class Outcome:
    kind: str
    prompt: str
    started: float
    seconds: float
    ok: bool
    detail: str = ""


@dataclass
class Load:
    """Clients in threads sending one request after another (tritonclient unary and streaming,
    OpenAI HTTP plain and streaming, in turn), each checked against the reference."""

    grpc_address: str
    http_url: str
    model: str
    expected: Expected
    clients: int = 3
    pause: float = 0.2  # between one client's requests: continuous load that leaves the 2 CI cores some air
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def __aenter__(self) -> "Load":
        for i in range(self.clients):
            thread = threading.Thread(target=self._client, args=(i,), name=f"load-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    async def __aexit__(self, *exc: object) -> None:
        """Let each client finish its request; joined off the event loop, which serves them."""
        self._stop.set()
        for thread in self._threads:
            await asyncio.to_thread(thread.join, TIMEOUT + 10)

    def since(self, moment: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.started >= moment]

    def slowest(self) -> float:
        with self._lock:
            return max((o.seconds for o in self.outcomes), default=0.0)

    def failures(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if not o.ok]

    def _client(self, index: int) -> None:
        expected = self.expected
        checks: list[tuple[str, Callable[[grpcclient.InferenceServerClient, str], bool]]] = [
            ("triton-unary", lambda c, p: triton_unary(c, self.model, p) == expected.tokens[p]),
            ("openai", lambda c, p: openai_completion(self.http_url, self.model, p) == expected.texts[p]),
            ("triton-stream", lambda c, p: triton_stream(c, self.model, [p]) == {p: expected.tokens[p]}),
            ("openai-stream", lambda c, p: openai_completion(self.http_url, self.model, p, stream=True)
             == expected.texts[p]),
        ]
        prompts = list(expected.tokens)
        with grpcclient.InferenceServerClient(url=self.grpc_address) as client:
            turn = index
            while not self._stop.is_set():
                kind, check = checks[turn % len(checks)]
                prompt = prompts[turn % len(prompts)]
                turn += 1
                started = time.monotonic()
                try:
                    ok, detail = check(client, prompt), "output differs from the reference"
                except Exception as err:  # every failure is recorded and asserted on
                    ok, detail = False, f"{type(err).__name__}: {err}"
                with self._lock:
                    self.outcomes.append(Outcome(kind, prompt, started, time.monotonic() - started, ok,
                                                 "" if ok else detail))
                self._stop.wait(self.pause)
