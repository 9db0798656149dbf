"""`helix worker`: run one stage of a plan in this process until SIGTERM / SIGINT.

Liveness answers at once; the model slice loads on a thread (progress in the log), then
the gRPC server starts and readiness turns green. With `ready_file`, the bound ports are
written there as JSON once serving, so launchers and tests can use port 0.
"""

import asyncio
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from aiohttp import web

from helix_planner.plan_format import Plan
from helix_worker.engine import cpu_kernels
from helix_worker.engine.grammar import Grammars
from helix_worker.engine.model import LayerSlice
from helix_worker.engine.slowdown import Slowdown
from helix_worker.engine.stage_engine import StageEngine
from helix_worker.envs import Settings, env_name
from helix_worker.errors import ServingError
from helix_worker.metrics import StageMetrics
from helix_worker.model.config import parse_dtype
from helix_worker.security.peers import PlanPeers
from helix_worker.security.tls import cluster_tls
from helix_worker.stage.endpoint import StageEndpoint
from helix_worker.stage.lease import LeaseKeeper
from helix_worker.stage.server import StageIdentity
from helix_worker.transport.http_base import health_routes, start_site
from helix_worker.transport.readyfile import write_ready_file

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StageOptions:
    plan: Plan
    node: str
    checkpoint: Path
    host: str = "127.0.0.1"
    port: int = 0
    http_port: int = 0
    ready_file: Path | None = None
    endpoints: dict[str, str] = field(default_factory=dict)  # plan nodes' addresses: the next hops it may dial
    endpoint_files: tuple[Path, ...] = ()
    peer_list: Path | None = None  # with it, the only next hops it may dial (kept current by the operator)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def layer_range(plan: Plan, node: str) -> tuple[int, int]:
    for planned in plan.nodes:
        if planned.name == node:
            return planned.start, planned.end
    raise ServingError(f"node {node!r} is not in the plan; its nodes are {', '.join(n.name for n in plan.nodes)}")


def kv_blocks(settings: Settings, model: LayerSlice) -> int:
    """Blocks of the stage's KV pool, the padding block included: HELIX_KV_CACHE_TOKENS when set,
    else as many as HELIX_KV_CACHE_BYTES holds."""
    block = settings.kv_block_tokens
    if settings.kv_cache_tokens:
        return -(-settings.kv_cache_tokens // block) + 1
    per_block = model.kv_bytes_per_block(block)
    if settings.kv_cache_bytes < 2 * per_block:
        raise ServingError(f"{env_name('kv_cache_bytes')}={settings.kv_cache_bytes} holds no KV block: one block of "
                           f"{block} tokens over layers [{model.start}, {model.end}) takes {per_block} bytes; raise it")
    return settings.kv_cache_bytes // per_block


async def serve_stage(options: StageOptions, settings: Settings) -> None:
    start, end = layer_range(options.plan, options.node)
    tls = cluster_tls(settings)
    peers = PlanPeers((n.name for n in options.plan.nodes), options.endpoints, options.endpoint_files,
                      peer_list=options.peer_list)
    if settings.torch_threads > 0:
        torch.set_num_threads(settings.torch_threads)
    metrics = StageMetrics(options.node, str(options.plan.model.get("name", "")))
    ready, broken = asyncio.Event(), asyncio.Event()
    app = web.Application()
    health_routes(app, ready.is_set, metrics.render, alive=lambda: not broken.is_set())
    runner, http_port = await start_site(app, options.host, options.http_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    endpoint: StageEndpoint | None = None
    try:
        began = time.perf_counter()
        log.info("%s: loading layers [%d, %d) from %s", options.node, start, end, options.checkpoint)
        dtype = parse_dtype(settings.dtype)
        model = await asyncio.to_thread(LayerSlice.load, options.checkpoint, start, end,
                                        dtype=dtype, device=resolve_device(settings.device))
        pool = model.new_pool(kv_blocks(settings, model), settings.kv_block_tokens)
        if model.device.type == "cpu":  # build (or load) the decode kernel now, not in the first step
            await asyncio.to_thread(cpu_kernels.paged_decode)
        engine = StageEngine(options.node, model, pool, max_batch_tokens=settings.max_batch_tokens,
                             slowdown=Slowdown(settings.slowdown, settings.slowdown_file), observer=metrics,
                             grammars=_grammars(options.checkpoint, model))
        tokens = engine.usage().capacity_tokens
        metrics.kv(engine.usage())
        identity = StageIdentity(options.node, str(options.plan.model.get("name", "")), options.plan.plan_hash)
        endpoint = await StageEndpoint.start(engine, identity, options.host, options.port, settings, tls=tls,
                                             peers=peers)
        port = endpoint.port
        engine_task = asyncio.create_task(engine.run())
        engine_task.add_done_callback(lambda task: _engine_stopped(options.node, task, ready, broken))
        leases = LeaseKeeper(settings.lease_seconds, engine.requests_by_peer, endpoint.servicer.connected,
                             endpoint.servicer.release)
        lease_task = asyncio.create_task(leases.run())
        ready.set()
        log.info("%s: serving layers [%d, %d) on %s:%d (http %d, data channel %s), KV %d tokens, loaded in %.1fs",
                 options.node, start, end, options.host, port, http_port, endpoint.data_port or "off", tokens,
                 time.perf_counter() - began)
        if options.ready_file is not None:
            write_ready_file(options.ready_file, {"grpc": port, "http": http_port, "pid": os.getpid()})
        await stop.wait()
        engine_task.cancel()
        lease_task.cancel()
    finally:
        if endpoint is not None:
            await endpoint.stop(grace=1.0)
        await runner.cleanup()


def _grammars(checkpoint: Path, model: LayerSlice) -> Grammars | None:
    """JSON output at the last stage, which samples: it needs the checkpoint's tokenizer."""
    config = model.config
    if model.end < config.num_layers or not (checkpoint / "tokenizer.json").exists():
        return None
    return Grammars(checkpoint, config)


def _engine_stopped(node: str, task: asyncio.Task[None], ready: asyncio.Event, broken: asyncio.Event) -> None:
    """The engine task ended while serving: say so loudly and turn unready (readiness, liveness
    and Describe fail), so front ends take this stage out of rotation and a supervisor restarts it."""
    if task.cancelled():
        return
    ready.clear()
    broken.set()
    log.error("%s: the engine stopped; this stage is unready and serves nothing until restarted", node,
              exc_info=task.exception())
