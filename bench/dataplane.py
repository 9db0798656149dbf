"""Data-plane benchmark: pipelines vs one process, gRPC streams vs raw TCP, per-hop latency.

    python bench/dataplane.py --quick     # CI: about a minute on two cores
    python bench/dataplane.py             # longer runs, steadier numbers

(a) generation tokens/s at batch 8: the whole model in this process (no serving layers at
    all) against 2- and 3-stage pipelines of worker processes driven by the coordinator,
    same checkpoint, same cores; target >= 0.8x.
(b) stage-to-stage throughput of 1 MiB activation messages against raw loopback TCP, target
    >= 0.5x: a stage's real outbound path (`StreamLink.send_batch`, tensor codec) to a real
    stage endpoint (gRPC server, data-channel listener, servicer decoding every batch) in
    another process, once over the TCP data channel workers use by default and once over
    the gRPC stream alone (their fallback).
(c) latency a hop adds at batch 1: (pipeline decode step - in-process step) / hops, where
    a k-stage pipeline has k + 1 hops (front end -> stages -> front end).
(d) what mutual TLS costs the stage streams: (b)'s two paths to a sink that requires the
    cluster's TLS, against the same paths in plaintext. (a) and (c) run with TLS, as workers do.
(e) failover from a hung stage: two 2-stage pipelines share their first stage; mid-generation
    the other stage of one is SIGSTOPped, and the figure is the time from the stop to the
    last of the batch's requests getting its next token (from the other pipeline, after the
    heartbeat declared the stage hung and the request re-prefilled); the stage is then
    SIGCONTed and rejoins before the next repeat. Target: within heartbeat + hung seconds
    plus one re-prefill.
Each figure is the best of a few interleaved repeats (the CI machine's cores are shared with
other jobs, so the best run is the one least disturbed); every number printed is measured in
this run.
"""

import os

# Idle OpenMP threads sleep instead of spinning, in this process and the workers alike: on
# shared cores, spinning threads steal the time slices of the ones doing the work.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP, so above its import

import argparse
import asyncio
import multiprocessing
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from results import markdown_table, write_table

from helix_worker.engine.model import LayerSlice
from helix_worker.engine.static_batch import StaticBatch
from helix_worker.envs import Settings
from helix_worker.fleet.launcher import LocalFleet
from helix_worker.fleet.layouts import manual_plan, proportional_split
from helix_worker.frontend.coordinator import Coordinator, GenerationRequest, ModelLimits
from helix_worker.model.random_checkpoint import DemoModel, write_demo_checkpoint
from helix_worker.protocol import Chunk, Hop, Phase
from helix_worker.security.issuing import issue, new_ca, write_bundle
from helix_worker.security.tls import ClusterTLS
from helix_worker.stage.endpoint import StageEndpoint
from helix_worker.stage.server import StageIdentity
from helix_worker.transport.links import StreamLink

MIB = 1 << 20


@dataclass(frozen=True)
class Sizes:
    batch: int
    prompt: int
    new_tokens: int
    latency_steps: int
    messages: int
    repeats: int


QUICK = Sizes(batch=8, prompt=16, new_tokens=16, latency_steps=12, messages=100, repeats=3)
FULL = Sizes(batch=8, prompt=64, new_tokens=64, latency_steps=40, messages=500, repeats=7)
HEARTBEAT_SECONDS, HUNG_SECONDS = 0.5, 2.0  # (e): shorter than the defaults (1 s, 10 s), to keep it quick
BENCH_MODEL = DemoModel(hidden_size=1024, intermediate_size=2816, num_layers=6, num_heads=16, num_kv_heads=4)


def prompts(sizes: Sizes, vocab: int) -> list[list[int]]:
    return [[(7 * i + 13 * j) % (vocab - 10) + 5 for j in range(sizes.prompt)] for i in range(sizes.batch)]


# (a) and (c): in-process baseline -------------------------------------------------------------

class SingleProcess:
    """The bare model in this process: the baseline with no serving layers at all."""

    def __init__(self, checkpoint: Path, sizes: Sizes) -> None:
        self.model = LayerSlice.load(checkpoint, 0, BENCH_MODEL.num_layers)
        self.sizes = sizes
        self._generate(prompts(sizes, 380)[:2], 2)  # warm-up

    def _generate(self, batch: list[list[int]], steps: int) -> float:
        model, prompt = self.model, self.sizes.prompt
        static = StaticBatch(model, len(batch), prompt + steps + 1)
        started = time.perf_counter()
        hidden = static.forward(torch.tensor(sum(batch, [])), [len(p) for p in batch])
        ends = torch.tensor([len(p) for p in batch]).cumsum(0) - 1
        tokens = model.logits(hidden[ends]).argmax(-1)
        for _ in range(steps - 1):
            hidden = static.forward(tokens, [1] * len(batch))
            tokens = model.logits(hidden).argmax(-1)
        return time.perf_counter() - started

    async def throughput(self) -> float:
        seconds = self._generate(prompts(self.sizes, 380), self.sizes.new_tokens)
        return self.sizes.batch * self.sizes.new_tokens / seconds

    async def step_ms(self) -> float:
        one, steps = prompts(self.sizes, 380)[:1], self.sizes.latency_steps
        return (self._generate(one, steps + 1) - self._generate(one, 1)) / steps * 1000


class Pipeline:
    """`stages` worker processes holding equal layer shares, driven by the coordinator."""

    def __init__(self, checkpoint: Path, stages: int, sizes: Sizes, fleet: LocalFleet) -> None:
        layers = BENCH_MODEL.num_layers
        self.chain = [(f"p{stages}-s{i}", s, e) for i, (s, e) in enumerate(proportional_split(layers, [1.0] * stages))]
        self.plan = manual_plan("bench", layers, [self.chain])
        self.checkpoint, self.sizes, self.fleet = checkpoint, sizes, fleet
        self.coordinator: Coordinator | None = None

    async def start(self, workdir: Path) -> None:
        plan_path = workdir / f"plan-{len(self.chain)}.json"
        plan_path.write_text(self.plan.to_json())
        children = [self.fleet.start_worker(plan_path, node, self.checkpoint) for node, _, _ in self.chain]
        endpoints = {c.name: (await asyncio.to_thread(self.fleet.wait, c)).grpc_address for c in children}
        self.coordinator = Coordinator(self.plan, endpoints, ModelLimits(10_000, 100_000), Settings(),
                                       tls=self.fleet.member_tls("bench-frontend"))
        await self.coordinator.start()
        await self.coordinator.wait_ready(120)
        await asyncio.gather(*(self._run(p, 2) for p in prompts(self.sizes, 380)[:2]))  # warm-up

    async def _run(self, prompt: list[int], count: int) -> list[float]:
        stamps = []
        async for _ in self.coordinator.generate(GenerationRequest(tuple(prompt), count)):
            stamps.append(time.perf_counter())
        return stamps

    async def throughput(self) -> float:
        started = time.perf_counter()
        await asyncio.gather(*(self._run(p, self.sizes.new_tokens) for p in prompts(self.sizes, 380)))
        return self.sizes.batch * self.sizes.new_tokens / (time.perf_counter() - started)

    async def step_ms(self) -> float:
        stamps = await self._run(prompts(self.sizes, 380)[0], self.sizes.latency_steps + 1)
        return statistics.median(b - a for a, b in zip(stamps, stamps[1:])) * 1000

    async def close(self) -> None:
        if self.coordinator is not None:
            await self.coordinator.close()


class HungStage:
    """(e): pipelines f0 -> f1 and f0 -> f2; f1 is stopped mid-generation and continued after."""

    def __init__(self, checkpoint: Path, sizes: Sizes, fleet: LocalFleet) -> None:
        layers, half = BENCH_MODEL.num_layers, BENCH_MODEL.num_layers // 2
        self.plan = manual_plan("bench", layers, [[("f0", 0, half), ("f1", half, layers)],
                                                  [("f0", 0, half), ("f2", half, layers)]])
        self.checkpoint, self.sizes, self.fleet = checkpoint, sizes, fleet
        self.coordinator: Coordinator | None = None
        self.victim = None

    async def start(self, workdir: Path) -> None:
        plan_path = workdir / "plan-hung.json"
        plan_path.write_text(self.plan.to_json())
        children = [self.fleet.start_worker(plan_path, node.name, self.checkpoint) for node in self.plan.nodes]
        endpoints = {c.name: (await asyncio.to_thread(self.fleet.wait, c)).grpc_address for c in children}
        self.victim = next(c for c in children if c.name == "f1")
        settings = Settings(heartbeat_seconds=HEARTBEAT_SECONDS, hung_seconds=HUNG_SECONDS, reconnect_seconds=0.2)
        self.coordinator = Coordinator(self.plan, endpoints, ModelLimits(10_000, 100_000), settings,
                                       tls=self.fleet.member_tls("bench-failover"))
        await self.coordinator.start()
        await self.coordinator.wait_ready(120)

    async def resume_seconds(self) -> float:
        stamps: list[list[float]] = [[] for _ in range(self.sizes.batch)]

        async def run(index: int, prompt: list[int]) -> None:
            async for _ in self.coordinator.generate(GenerationRequest(tuple(prompt), self.sizes.new_tokens)):
                stamps[index].append(time.monotonic())

        tasks = [asyncio.create_task(run(i, p)) for i, p in enumerate(prompts(self.sizes, 380))]
        while not all(len(s) >= 2 for s in stamps):
            await asyncio.sleep(0.005)
        stopped = time.monotonic()
        os.kill(self.victim.process.pid, signal.SIGSTOP)
        try:
            await asyncio.gather(*tasks)
        finally:
            os.kill(self.victim.process.pid, signal.SIGCONT)
        routes = self.coordinator.routes  # f1 back, and every pipeline through it (its links too)
        while not all(routes.usable(route) for route in routes.routes):
            await asyncio.sleep(0.05)
        return max(min(t for t in s if t > stopped) - stopped for s in stamps if s[-1] > stopped)

    async def close(self) -> None:
        if self.coordinator is not None:
            await self.coordinator.close()


# (b): stream throughput ------------------------------------------------------------------------

class _CountingStage:
    """Stands in for the engine behind a real stage endpoint: takes every decoded batch and
    answers its sender after each `expected` of them (compute is not what (b) measures)."""

    def __init__(self, expected: int) -> None:
        self.expected, self.outputs, self.seen = expected, None, {}

    def submit(self, chunks: list[Chunk], payload: torch.Tensor) -> None:
        peer = chunks[0].reply_to
        self.seen[peer] = self.seen.get(peer, 0) + 1
        if self.seen[peer] % self.expected == 0:
            self.outputs.deliver(peer, [], [])

    def release(self, request_ids: list[str]) -> None:
        pass


def _stage_sink(port_queue, arg: tuple[int, ClusterTLS | None]) -> None:
    expected, tls = arg

    async def serve() -> None:
        settings = Settings(max_message_bytes=256 * MIB)  # the data channel on, as in workers
        endpoint = await StageEndpoint.start(_CountingStage(expected), StageIdentity("sink", "bench", ""),
                                             "127.0.0.1", 0, settings, tls=tls)
        port_queue.put(endpoint.port)
        await endpoint.server.wait_for_termination()

    asyncio.run(serve())


def _tcp_sink(port_queue, total: int) -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        port_queue.put(server.getsockname()[1])
        buffer = bytearray(MIB)
        conn, _ = server.accept()
        while True:  # one connection for every repeat, as a link keeps its stream
            received = 0
            while received < total:
                received += conn.recv_into(buffer)
            conn.sendall(b"k")


def _start(target, arg) -> tuple[multiprocessing.Process, int]:
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    process = ctx.Process(target=target, args=(queue, arg), daemon=True)
    process.start()
    return process, queue.get(timeout=60)


class TcpStream:
    """Raw loopback TCP: 1 MiB sendall calls on one connection to a receiver process that
    recv_into's them."""

    def __init__(self, messages: int) -> None:
        self.messages = messages
        self.process, port = _start(_tcp_sink, messages * MIB)
        self.conn = socket.create_connection(("127.0.0.1", port))
        self.payload = os.urandom(MIB)

    async def throughput(self) -> float:
        started = time.perf_counter()
        for _ in range(self.messages):
            self.conn.sendall(self.payload)
        self.conn.recv(1)
        return self.messages * MIB / (time.perf_counter() - started) / 1e6

    async def close(self) -> None:
        self.conn.close()
        self.process.terminate()


class StageStream:
    """A stage's outbound path to the stage sink, on the data channel or the gRPC stream only."""

    def __init__(self, port: int, messages: int, data_channel: bool, tls: ClusterTLS | None = None) -> None:
        self.messages, self.data_channel = messages, data_channel
        self.done = asyncio.Event()
        name = ("bench-tcp" if data_channel else "bench-grpc") + ("-tls" if tls else "")
        self.link = StreamLink(f"127.0.0.1:{port}", name, max_message_bytes=256 * MIB, data_channel=data_channel,
                               on_event=lambda _: self.done.set(), tls=tls)
        self.hidden = torch.randn(MIB // (4 * 1024), 1024)  # 1 MiB of float32 activations
        self.chunk = Chunk("r", Phase.DECODE, 0, self.hidden.shape[0], (Hop("sink", f"127.0.0.1:{port}", 0, 1),), name)

    async def throughput(self) -> float:
        if not self.link.up:
            await self.link.connect(timeout=30)
            if self.link.transport != ("tcp" if self.data_channel else "grpc"):
                raise RuntimeError(f"the link to the stage sink fell back to {self.link.transport}")
        self.done.clear()
        started = time.perf_counter()
        for _ in range(self.messages):
            self.link.send_batch([self.chunk], self.hidden)
            await asyncio.sleep(0)
        await asyncio.wait_for(self.done.wait(), 120)
        return self.messages * MIB / (time.perf_counter() - started) / 1e6

    async def close(self) -> None:
        await self.link.close()


# Report ----------------------------------------------------------------------------------------

def table(rows: list[tuple[str, str, str, str, str]]) -> str:
    header = ("measurement", "baseline", "helix data plane", "ratio", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(5)]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths)), *map(line, rows)])


async def best(subjects: dict[str, object], method: str, repeats: int, pick=max) -> dict[str, float]:
    """Interleave repeats across subjects so load spikes hit all of them alike; keep the best."""
    results: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(repeats):
        for name, subject in subjects.items():
            results[name].append(await getattr(subject, method)())
    return {name: pick(values) for name, values in results.items()}


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes for CI (about a minute)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch threads per process")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else FULL
    torch.set_num_threads(args.threads)
    env = {"HELIX_TORCH_THREADS": str(args.threads), "HELIX_KV_CACHE_TOKENS": "65536"}
    setting = (f"Model: {BENCH_MODEL.num_layers} layers, hidden {BENCH_MODEL.hidden_size}, fp32; {args.threads} torch "
               f"threads per process; batch {sizes.batch}, prompt {sizes.prompt}, {sizes.new_tokens} new tokens, "
               f"{sizes.messages} messages; each figure the best of {sizes.repeats} interleaved repeats; load average "
               f"{os.getloadavg()[0]:.2f} before the run.")
    print(setting, file=sys.stderr)
    with tempfile.TemporaryDirectory() as scratch, LocalFleet(Path(scratch) / "fleet", env=env) as fleet:
        workdir = Path(scratch)
        checkpoint = workdir / "model"
        write_demo_checkpoint(checkpoint, BENCH_MODEL)
        subjects = {"single": SingleProcess(checkpoint, sizes)}
        subjects |= {str(k): Pipeline(checkpoint, k, sizes, fleet) for k in (2, 3)}
        hung = HungStage(checkpoint, sizes, fleet)
        sink, sink_port = _start(_stage_sink, (sizes.messages, None))
        ca = new_ca("bench")
        sink_tls, peer_tls = (ClusterTLS.from_dir(write_bundle(workdir / name, ca, issue(ca, name)))
                              for name in ("sink", "peer"))
        tls_sink, tls_port = _start(_stage_sink, (sizes.messages, sink_tls))
        streams = {"tcp": TcpStream(sizes.messages), "data": StageStream(sink_port, sizes.messages, True),
                   "grpc": StageStream(sink_port, sizes.messages, False),
                   "data-tls": StageStream(tls_port, sizes.messages, True, peer_tls),
                   "grpc-tls": StageStream(tls_port, sizes.messages, False, peer_tls)}
        try:
            for k in ("2", "3"):
                await subjects[k].start(workdir)
            tokens = await best(subjects, "throughput", sizes.repeats)
            steps = await best(subjects, "step_ms", sizes.repeats, pick=min)
            rates = await best(streams, "throughput", sizes.repeats)
            await hung.start(workdir)  # its workers start after (a)-(d), which they would share cores with
            resumed = [await hung.resume_seconds() for _ in range(3)]
        finally:
            for subject in [*subjects.values(), *streams.values(), hung]:
                if hasattr(subject, "close"):
                    await subject.close()
            sink.terminate()
            tls_sink.terminate()
    rows = [(f"(a) tokens/s, batch {sizes.batch}, {k} stages", f"1 process {tokens['single']:8.1f}",
             f"{k} processes {tokens[k]:8.1f}", f"{tokens[k] / tokens['single']:.2f}x", ">= 0.8x") for k in ("2", "3")]
    rows.append(("(b) 1 MiB messages, MB/s", f"raw TCP {rates['tcp']:8.1f}", f"data channel {rates['data']:8.1f}",
                 f"{rates['data'] / rates['tcp']:.2f}x", ">= 0.5x"))
    rows.append(("(b) same, gRPC fallback", f"raw TCP {rates['tcp']:8.1f}", f"gRPC stream {rates['grpc']:8.1f}",
                 f"{rates['grpc'] / rates['tcp']:.2f}x", "(reference)"))
    for path, name in (("data", "data channel"), ("grpc", "gRPC stream")):
        rows.append((f"(d) {name}, TLS vs plaintext, MB/s", f"plaintext {rates[path]:8.1f}",
                     f"mutual TLS {rates[path + '-tls']:8.1f}", f"{rates[path + '-tls'] / rates[path]:.2f}x",
                     "(cost of TLS)"))
    for k in ("2", "3"):
        hops = int(k) + 1
        rows.append((f"(c) decode step, batch 1, {k} stages", f"1 process {steps['single']:6.2f} ms",
                     f"{k} stages {steps[k]:6.2f} ms", f"+{(steps[k] - steps['single']) / hops:.2f} ms/hop",
                     f"({hops} hops)"))
    bound = HEARTBEAT_SECONDS + HUNG_SECONDS
    rows.append(("(e) SIGSTOPped stage to its requests' next token elsewhere, median of 3",
                 f"heartbeat + hung {bound:.1f} s", f"resumed after {statistics.median(resumed):.2f} s "
                 f"(max {max(resumed):.2f})", f"{statistics.median(resumed) / bound:.2f}x",
                 "<= bound + a re-prefill"))
    print(table(rows))
    header = ("measurement", "baseline", "helix data plane", "ratio", "target")
    write_table("dataplane", setting + "\n\n" + markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
