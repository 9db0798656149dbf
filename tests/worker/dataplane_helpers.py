"""Helpers the data-plane tests share (plain functions; fixtures live in conftest.py)."""

import asyncio
import json
import struct
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch
import xgrammar as xgr

from helix_dev.kubelet import project
from helix_planner.plan_format import Plan
from helix_proto import grpc_service_pb2 as kserve
from helix_worker.engine.reference import ReferenceModel
from helix_worker.fleet.launcher import LocalFleet
from helix_worker.fleet.layouts import Layout, manual_plan
from helix_worker.frontend.coordinator import Coordinator, GenerationRequest
from helix_worker.model.config import load_model_config
from helix_worker.model.tokenizer import load_tokenizer, stop_ids
from helix_worker.protocol import SamplingParams
from helix_worker.security.tls import ClusterTLS
from helix_worker.transport.links import StreamLink

MODEL = "tiny-llama"
NUM_LAYERS = 6
# Workers run with one torch thread each: the CI machine has two cores shared by everyone.
WORKER_ENV = {"HELIX_TORCH_THREADS": "1", "HELIX_KV_CACHE_TOKENS": "4096", "HELIX_RECONNECT_SECONDS": "0.2"}


def write_plan(directory: Path, pipelines: list[Layout], weights: list[float] | None = None) -> tuple[Plan, Path]:
    plan = manual_plan(MODEL, NUM_LAYERS, pipelines, weights)
    path = directory / "plan.json"
    path.write_text(plan.to_json())
    return plan, path


def start_workers(fleet: LocalFleet, plan: Plan, plan_path: Path, checkpoint: Path) -> dict[str, str]:
    """Start one worker per plan node; returns node -> gRPC address."""
    children = [fleet.start_worker(plan_path, node.name, checkpoint) for node in plan.nodes]
    return {child.name: fleet.wait(child).grpc_address for child in children}


def write_volume(directory: Path, files: dict[str, str | bytes]) -> Path:
    """Write `files` into `directory` as the kubelet updates a ConfigMap or Secret volume (one
    atomic symlink swap); returns the directory."""
    directory.mkdir(parents=True, exist_ok=True)
    project(directory, {name: content.encode() if isinstance(content, str) else content
                        for name, content in files.items()})
    return directory


def write_endpoints(directory: Path, endpoints: dict[str, str]) -> Path:
    path = directory / "endpoints.json"
    path.write_text(json.dumps(endpoints))
    return path


def wait_http_ready(url: str, timeout: float = 60.0) -> None:
    """Poll /readyz until it answers 200 (a pipeline is fully up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/readyz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


async def generate_with_logits(coordinator: Coordinator, prompt: list[int], max_tokens: int,
                               delay: float = 0.0, times: list[float] | None = None
                               ) -> tuple[list[int], list[torch.Tensor]]:
    """Greedy tokens of one request and the logits each was sampled from; with `times`, the
    monotonic time each token arrived is appended there as it comes."""
    await asyncio.sleep(delay)
    request = GenerationRequest(tuple(prompt), max_tokens, SamplingParams(return_logits=True))
    tokens, logits = [], []
    async for event in coordinator.generate(request):
        if times is not None:
            times.append(time.monotonic())
        tokens.append(event.token_id)
        logits.append(event.logits)
    return tokens, logits


async def wait_for(condition: Callable[[], object], timeout: float) -> float:
    """Poll until `condition()` is true; returns the seconds it took."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while not condition():
        assert loop.time() - began < timeout, "condition not met in time"
        await asyncio.sleep(0.01)
    return loop.time() - began


def assert_reference_runs(checkpoint: Path, prompts: list[list[int]], runs: list[tuple[list[int], list[torch.Tensor]]],
                          max_tokens: int) -> None:
    """Every run has the single-process reference's greedy tokens, with logits within 1e-4."""
    reference = ReferenceModel(checkpoint)
    for prompt, (tokens, logits) in zip(prompts, runs, strict=True):
        expected = reference.greedy(prompt, max_tokens)
        assert tokens == expected.tokens, f"prompt of {len(prompt)} tokens diverged"
        for got, want in zip(logits, expected.logits, strict=True):
            assert torch.allclose(got, want, atol=1e-4, rtol=0), (got - want).abs().max()


async def kv_used(address: str, tls: ClusterTLS) -> int:
    """KV tokens (whole blocks) a stage's requests hold now, as its Describe says."""
    link = StreamLink(address, "probe", max_message_bytes=1 << 20, tls=tls)
    return int((await link.describe(timeout=5)).kv_used_tokens)


def failovers(coordinator: Coordinator) -> float:
    """Requests the coordinator re-prefilled on another route (whatever labels the counter has)."""
    return sum(sample.value for family in coordinator.metrics.registry.collect() if family.name == "helix_failovers"
               for sample in family.samples if sample.name.endswith("_total"))


def kserve_request(inputs: dict[str, tuple[str, list[int], bytes]], model: str = MODEL,
                   **parameters: object) -> kserve.ModelInferRequest:
    """A KServe request whose inputs travel as raw contents: name -> (datatype, shape, raw bytes)."""
    request = kserve.ModelInferRequest(model_name=model)
    for name, (datatype, shape, raw) in inputs.items():
        request.inputs.add(name=name, datatype=datatype, shape=shape)
        request.raw_input_contents.append(raw)
    for key, value in parameters.items():
        slot = {bool: "bool_param", int: "int64_param", str: "string_param", float: "double_param"}[type(value)]
        setattr(request.parameters[key], slot, value)
    return request


def bytes_tensor(*items: bytes) -> bytes:
    """Raw contents of a KServe BYTES tensor: each element prefixed by its 4-byte length."""
    return b"".join(struct.pack("<I", len(item)) + item for item in items)


def penalized_greedy(reference: ReferenceModel, prompt: list[int], max_tokens: int, *, presence: float = 0.0,
                     frequency: float = 0.0, repetition: float = 1.0,
                     bias: dict[int, float] | None = None) -> list[int]:
    """Greedy tokens with vLLM's penalties, written out here independently of the server's code."""
    out: list[int] = []
    for _ in range(max_tokens):
        logits = reference.next_logits(prompt + out).clone()
        for token, value in (bias or {}).items():
            logits[token] += value
        for token in set(prompt + out):
            logits[token] = logits[token] / repetition if logits[token] > 0 else logits[token] * repetition
        for token in set(out):
            logits[token] -= frequency * out.count(token) + presence
        out.append(int(torch.argmax(logits)))
    return out


def grammar_greedy(reference: ReferenceModel, checkpoint: Path, prompt: list[int], schema: str) -> list[int]:
    """Greedy tokens under a JSON Schema, masked here by xgrammar's own matcher (compact JSON, as the
    server compiles it), up to and with the end-of-sequence token that ends the value."""
    tokenizer, config = load_tokenizer(checkpoint), load_model_config(checkpoint)
    info = xgr.TokenizerInfo.from_huggingface(tokenizer.hf, vocab_size=config.vocab_size,
                                              stop_token_ids=list(stop_ids(config, tokenizer)))
    matcher = xgr.GrammarMatcher(xgr.GrammarCompiler(info).compile_json_schema(schema, any_whitespace=False))
    mask, out = xgr.allocate_token_bitmask(1, config.vocab_size), []
    while not matcher.is_terminated():
        logits = reference.next_logits(prompt + out).clone().unsqueeze(0)
        matcher.fill_next_token_bitmask(mask)
        xgr.apply_token_bitmask_inplace(logits, mask)
        out.append(int(logits.argmax()))
        assert matcher.accept_token(out[-1])
    return out
