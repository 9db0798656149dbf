"""Data-plane benchmark: pipelines vs one process, gRPC streams vs raw TCP, per-hop latency.

    python bench/dataplane.py --quick     # CI: about a minute on two cores
    python bench/dataplane.py             # longer runs, steadier numbers

(a) generation tokens/s at batch 8: the whole model in this process (no serving layers at
    all) against 2- and 3-stage pipelines of worker processes driven by the coordinator,
    same checkpoint, same cores; target >= 0.8x.
(b) stage-to-stage stream throughput of 1 MiB activation messages (real `StreamLink` and
    tensor codec, receiver in another process) against raw loopback TCP; target >= 0.5x.
(c) latency a hop adds at batch 1: (pipeline decode step - in-process step) / hops, where
    a k-stage pipeline has k + 1 hops (front end -> stages -> front end).
Every number printed is measured in this run.
"""

import argparse
import asyncio
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import torch

from helix_proto import helix_stage_pb2 as pb
from helix_proto import helix_stage_pb2_grpc as pb_grpc
from helix_worker import wire
from helix_worker.envs import Settings
from helix_worker.frontend.coordinator import Coordinator, GenerationRequest, ModelLimits
from helix_worker.kv_cache import KVCache
from helix_worker.launcher import LocalFleet
from helix_worker.links import StreamLink, channel_options
from helix_worker.local_plan import manual_plan, proportional_split
from helix_worker.model_init import DemoModel, write_demo_checkpoint
from helix_worker.protocol import Chunk, Hop, Phase
from helix_worker.slice_model import LayerSlice, Rows

MIB = 1 << 20


@dataclass(frozen=True)
class Sizes:
    batch: int
    prompt: int
    new_tokens: int
    latency_steps: int
    messages: int


QUICK = Sizes(batch=8, prompt=16, new_tokens=16, latency_steps=12, messages=150)
FULL = Sizes(batch=8, prompt=64, new_tokens=64, latency_steps=40, messages=600)
BENCH_MODEL = DemoModel(hidden_size=1024, intermediate_size=2816, num_layers=6, num_heads=16, num_kv_heads=4)


def prompts(sizes: Sizes, vocab: int) -> list[list[int]]:
    return [[(7 * i + 13 * j) % (vocab - 10) + 5 for j in range(sizes.prompt)] for i in range(sizes.batch)]


# (a) and (c): in-process baseline -------------------------------------------------------------

def single_process(checkpoint: Path, sizes: Sizes) -> tuple[float, float]:
    """(tokens/s at batch, ms per decode step at batch 1) with the bare model in this process."""
    model = LayerSlice.load(checkpoint, 0, BENCH_MODEL.num_layers)
    vocab = model.config.vocab_size

    def generate(batch: list[list[int]], steps: int) -> float:
        pool = KVCache(len(batch) * (sizes.prompt + steps + 1), *model.new_cache_shape(), model.dtype, model.device)
        caches = [pool.allocate(str(i), sizes.prompt + steps + 1) for i in range(len(batch))]
        started = time.perf_counter()
        hidden = model.forward(torch.tensor(sum(batch, [])), [Rows(len(p), 0, c) for p, c in zip(batch, caches)])
        ends = torch.tensor([len(p) for p in batch]).cumsum(0) - 1
        tokens = model.logits(hidden[ends]).argmax(-1)
        for step in range(steps - 1):
            hidden = model.forward(tokens, [Rows(1, sizes.prompt + step, c) for c in caches])
            tokens = model.logits(hidden).argmax(-1)
        return time.perf_counter() - started

    generate(prompts(sizes, vocab)[:2], 2)  # warm-up
    elapsed = generate(prompts(sizes, vocab), sizes.new_tokens)
    one = prompts(sizes, vocab)[:1]
    step_ms = (generate(one, sizes.latency_steps + 1) - generate(one, 1)) / sizes.latency_steps * 1000
    return sizes.batch * sizes.new_tokens / elapsed, step_ms


async def pipeline(checkpoint: Path, stages: int, sizes: Sizes, workdir: Path, env: dict) -> tuple[float, float]:
    """(tokens/s at batch, ms per decode step at batch 1) through `stages` worker processes."""
    layers = BENCH_MODEL.num_layers
    chain = [(f"s{i}", s, e) for i, (s, e) in enumerate(proportional_split(layers, [1.0] * stages))]
    plan = manual_plan("bench", layers, [chain])
    plan_path = workdir / f"plan-{stages}.json"
    plan_path.write_text(plan.to_json())
    with LocalFleet(workdir / f"fleet-{stages}", env=env) as fleet:
        children = [fleet.start_worker(plan_path, node, checkpoint) for node, _, _ in chain]
        endpoints = {c.name: (await asyncio.to_thread(fleet.wait, c)).grpc_address for c in children}
        coordinator = Coordinator(plan, endpoints, ModelLimits(10_000, 100_000), Settings())
        await coordinator.start()
        try:
            await coordinator.wait_ready(120)

            async def run(prompt: list[int], count: int) -> list[float]:
                stamps = []
                async for _ in coordinator.generate(GenerationRequest(tuple(prompt), count)):
                    stamps.append(time.perf_counter())
                return stamps

            await asyncio.gather(*(run(p, 2) for p in prompts(sizes, 380)[:2]))  # warm-up
            started = time.perf_counter()
            await asyncio.gather(*(run(p, sizes.new_tokens) for p in prompts(sizes, 380)))
            throughput = sizes.batch * sizes.new_tokens / (time.perf_counter() - started)
            stamps = await run(prompts(sizes, 380)[0], sizes.latency_steps + 1)
            step_ms = statistics.median(b - a for a, b in zip(stamps, stamps[1:])) * 1000
        finally:
            await coordinator.close()
    return throughput, step_ms


# (b): stream throughput ------------------------------------------------------------------------

class _Sink(pb_grpc.StageServiceServicer):
    """Decodes every payload the way a stage does and answers once `expected` arrived."""

    def __init__(self, expected: int) -> None:
        self.expected = expected

    async def Connect(self, request_iterator, context):  # noqa: N802
        seen = 0
        await context.send_initial_metadata(())
        async for message in request_iterator:
            wire.tensor_from_proto(message.batch.payload)
            seen += 1
            if seen == self.expected:
                yield pb.StageEvent()


def _grpc_sink(port_queue, expected: int) -> None:
    async def serve() -> None:
        server = grpc.aio.server(options=channel_options(256 * MIB))
        pb_grpc.add_StageServiceServicer_to_server(_Sink(expected), server)
        port_queue.put(server.add_insecure_port("127.0.0.1:0"))
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


def _tcp_sink(port_queue, total: int) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port_queue.put(server.getsockname()[1])
        conn, _ = server.accept()
        buffer, received = bytearray(MIB), 0
        while received < total:
            received += conn.recv_into(buffer)
        conn.sendall(b"k")
        conn.close()


def _start(target, arg) -> tuple[multiprocessing.Process, int]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=target, args=(queue, arg), daemon=True)
    process.start()
    return process, queue.get(timeout=60)


def tcp_throughput(messages: int) -> float:
    process, port = _start(_tcp_sink, messages * MIB)
    try:
        payload = os.urandom(MIB)
        with socket.create_connection(("127.0.0.1", port)) as conn:
            started = time.perf_counter()
            for _ in range(messages):
                conn.sendall(payload)
            conn.recv(1)
            return messages * MIB / (time.perf_counter() - started) / 1e6
    finally:
        process.terminate()


async def grpc_throughput(messages: int) -> float:
    process, port = _start(_grpc_sink, messages)
    done = asyncio.Event()
    link = StreamLink(f"127.0.0.1:{port}", "bench", max_message_bytes=256 * MIB, on_event=lambda _: done.set())
    try:
        await link.connect(timeout=30)
        hidden = torch.randn(MIB // (4 * 1024), 1024)  # 1 MiB of float32 activations
        hop = Hop("sink", f"127.0.0.1:{port}", 0, 1)
        chunk = Chunk("r", Phase.DECODE, 0, hidden.shape[0], (hop,), "bench")
        started = time.perf_counter()
        for _ in range(messages):
            link.send(wire.batch_to_proto([chunk], hidden))
            await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 120)
        return messages * MIB / (time.perf_counter() - started) / 1e6
    finally:
        await link.close()
        process.terminate()


# Report ----------------------------------------------------------------------------------------

def table(rows: list[tuple[str, str, str, str, str]]) -> str:
    header = ("measurement", "baseline", "helix data plane", "ratio", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for CI (about a minute)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per process")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    env = {"HELIX_TORCH_THREADS": str(args.threads), "HELIX_KV_CACHE_TOKENS": "65536", "OMP_WAIT_POLICY": "PASSIVE"}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        checkpoint = workdir / "model"
        write_demo_checkpoint(checkpoint, BENCH_MODEL)
        print(f"model: {BENCH_MODEL.num_layers} layers, hidden {BENCH_MODEL.hidden_size}, fp32; {os.cpu_count()} "
              f"cores, {args.threads} torch threads per process; batch {sizes.batch}, prompt {sizes.prompt}, "
              f"{sizes.new_tokens} new tokens", file=sys.stderr)
        single_tps, single_ms = single_process(checkpoint, sizes)
        print(f"1 process: {single_tps:.1f} tokens/s, {single_ms:.2f} ms/step at batch 1", file=sys.stderr)
        runs = {}
        for k in (2, 3):
            runs[k] = await pipeline(checkpoint, k, sizes, workdir, env)
            print(f"{k} stages: {runs[k][0]:.1f} tokens/s, {runs[k][1]:.2f} ms/step at batch 1", file=sys.stderr)
    tcp = tcp_throughput(sizes.messages)
    stream = await grpc_throughput(sizes.messages)
    rows = [(f"(a) tokens/s, batch {sizes.batch}, {k} stages", f"1 process {single_tps:8.1f}",
             f"{k} processes {tps:8.1f}", f"{tps / single_tps:.2f}x", ">= 0.8x") for k, (tps, _) in runs.items()]
    rows.append(("(b) 1 MiB messages, MB/s", f"raw TCP {tcp:8.1f}", f"gRPC stream {stream:8.1f}",
                 f"{stream / tcp:.2f}x", ">= 0.5x"))
    for k, (_, ms) in runs.items():
        rows.append((f"(c) decode step, batch 1, {k} stages", f"1 process {single_ms:6.2f} ms",
                     f"{k} stages {ms:6.2f} ms", f"+{(ms - single_ms) / (k + 1):.2f} ms/hop", f"({k + 1} hops)"))
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
