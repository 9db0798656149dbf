"""`helix profile`: per-layer prompt and decode latency curves of this device, in catalog format.

Like the Helix authors' vLLM measurements, it times a few decoder layers (random weights of
the model's real shape are enough: latency depends on shape, not values) at several prompt
lengths and decode batch sizes, through the serving engine's own step (paged KV pool,
batched attention), and writes `promptMs` / `decodeMs` lists of [x, ms per layer] that
`--catalog` directories feed straight to the planner. `helix up` runs the same measurement
at a few points to plan its local workers (see `fleet_plan`).
"""

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch
import yaml

from helix_worker.engine.model import LayerSlice
from helix_worker.engine.static_batch import StaticBatch
from helix_worker.model.config import load_model_config

BLOCK_TOKENS = 16


@dataclass(frozen=True)
class ProfileOptions:
    checkpoint: Path
    gpu_name: str
    device: torch.device
    dtype: torch.dtype | None = None  # None: the checkpoint's own
    layers: int = 2
    prompt_tokens: tuple[int, ...] = (32, 64, 128, 256, 512)
    decode_batches: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    decode_context: int = 128
    repeats: int = 3
    fastest: bool = False  # the fastest repeat instead of the median (other processes' time on a busy machine)


def _timed(device: torch.device, run: Callable[[], object]) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def _median_ms(options: ProfileOptions, run: Callable[[], object]) -> float:
    run()  # warm-up (allocations, kernels)
    pick = min if options.fastest else statistics.median
    return pick(_timed(options.device, run) for _ in range(options.repeats)) * 1000.0


def measure(options: ProfileOptions, log: Callable[[str], object] = print) -> dict[str, Any]:
    """The catalog document: {model, source, measured: {gpu: {maxLayers, promptMs, decodeMs}}}."""
    config = load_model_config(options.checkpoint)
    layers = min(options.layers, config.num_layers)
    model = LayerSlice.load(options.checkpoint, 0, layers, dtype=options.dtype, device=options.device)
    width = (config.hidden_size,)

    def step(batch: int, cached: int, new: int) -> Callable[[], object]:
        """One timed step of `batch` requests with `new` rows each after `cached` tokens."""
        static = StaticBatch(model, batch, cached + new, cached=cached, block_tokens=BLOCK_TOKENS)
        hidden = torch.randn(batch * new, *width, device=model.device).to(model.dtype)
        return lambda: static.forward(hidden, [new] * batch, advance=False)

    prompt = []
    for tokens in options.prompt_tokens:
        ms = _median_ms(options, step(1, 0, tokens))
        prompt.append([float(tokens), ms / layers])
        log(f"prompt {tokens:5d} tokens: {ms / layers:8.3f} ms/layer")
    decode = []
    context = options.decode_context
    for batch in options.decode_batches:
        ms = _median_ms(options, step(batch, context, 1))
        decode.append([float(batch), ms / layers])
        log(f"decode batch {batch:3d}: {ms / layers:8.3f} ms/layer")
    prompt, decode = monotone(prompt), monotone(decode)
    layer_bytes = model.layers[0].nbytes
    return {
        "model": options.checkpoint.name,
        "source": f"helix profile, {date.today().isoformat()}, torch {torch.__version__}, "
                  f"{str(model.dtype).removeprefix('torch.')}, "
                  f"{layers} layers timed, decode context {context}",
        "measured": {options.gpu_name: {
            "maxLayers": max_layers(options.device, layer_bytes, config.num_layers),
            "blockSize": BLOCK_TOKENS, "promptMs": prompt, "decodeMs": decode}},
    }


def monotone(points: list[list[float]]) -> list[list[float]]:
    """[[0, 0], *points] with each latency lowered to the smallest at any larger size, rounded.

    More rows never take less time, so a point above a later one was slowed by something else
    (another process on the cores, a kernel built on first use). Left as measured, such a point
    bends the curve's last segment downwards, and the planner, extrapolating along it, saw
    negative latency and planned nothing."""
    out, lowest = [], float("inf")
    for x, ms in reversed(points):
        lowest = min(lowest, ms)
        out.append([x, round(lowest, 4)])
    return [[0.0, 0.0], *reversed(out)]


def max_layers(device: torch.device, layer_bytes: int, num_layers: int) -> int:
    """Layers that fit in 90% of device memory with a third left for KV cache (an estimate)."""
    return max(1, min(num_layers, int(device_memory(device) * 0.9 * 2 / 3 // max(layer_bytes, 1))))


def device_memory(device: torch.device) -> int:
    """Bytes of memory on `device`: the GPU's, or this machine's RAM for the CPU."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_name(device: torch.device) -> str:
    """A catalog-style name for `device`: the GPU's model (spaces as dashes), or `cpu`."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device).replace(" ", "-")
    return "cpu"


def write_profile(document: dict[str, Any], path: Path) -> None:
    path.write_text(yaml.safe_dump(document, sort_keys=False, default_flow_style=None))
