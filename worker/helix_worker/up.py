"""`helix up`: plan a local fleet, start its workers and the front end on 127.0.0.1, serve.

The fleet is either a cluster YAML file (placed by the planner's `plan_cluster` for the
checkpoint's real shape, each node emulated by a local worker slowed down by its GPU's peak
FLOP/s relative to the fastest) or
N local workers with optional slowdown factors, which split the layers in proportion to
their speed. It prints the endpoints and a sample generation, then serves until Ctrl-C
(or exits after the sample with `exit_after_sample`), always stopping every child.
"""

import json
import signal
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from helix_planner.plan_format import Plan
from helix_worker.errors import ServingError
from helix_worker.launcher import LocalFleet
from helix_worker.local_plan import manual_plan, proportional_split
from helix_worker.model_config import ModelConfig, load_model_config
from helix_worker.model_init import write_demo_checkpoint


@dataclass(frozen=True)
class UpOptions:
    checkpoint: Path | None = None
    cluster_file: Path | None = None
    workers: int = 3
    pipelines: int = 1
    slowdowns: tuple[float, ...] = ()
    workdir: Path | None = None
    grpc_port: int = 8001
    http_port: int = 8000
    prompt: str = "Helix serves"
    max_tokens: int = 16
    exit_after_sample: bool = False
    ready_timeout: float = 180.0
    plan_seconds: float = 20.0


def local_fleet_plan(config: ModelConfig, name: str, workers: int, pipelines: int,
                     slowdowns: tuple[float, ...]) -> tuple[Plan, dict[str, float]]:
    """`pipelines` chains of workers, layers split by speed (1 / slowdown), weighted by speed."""
    slowdowns = slowdowns or (1.0,) * workers
    if len(slowdowns) != workers:
        raise ServingError(f"give one slowdown factor per worker: {workers} workers, {len(slowdowns)} factors")
    if pipelines < 1 or workers % pipelines:
        raise ServingError(f"{workers} workers do not split evenly into {pipelines} pipelines")
    per_chain = workers // pipelines
    if per_chain > config.num_layers:
        raise ServingError(f"{per_chain} stages per pipeline but the model has only {config.num_layers} layers")
    chains, weights, factors = [], [], {}
    for p in range(pipelines):
        names = [f"worker-{p * per_chain + i}" for i in range(per_chain)]
        speeds = [1.0 / slowdowns[p * per_chain + i] for i in range(per_chain)]
        ranges = proportional_split(config.num_layers, speeds)
        chains.append([(n, s, e) for n, (s, e) in zip(names, ranges)])
        weights.append(1.0 / sum((e - s) / speed for (s, e), speed in zip(ranges, speeds)))
        factors |= {n: slowdowns[p * per_chain + i] for i, n in enumerate(names)}
    return manual_plan(name, config.num_layers, chains, weights), factors


def cluster_file_plan(path: Path, config: ModelConfig, name: str, time_limit: float,
                      out=print) -> tuple[Plan, dict[str, float]]:
    """Plan a cluster YAML with the planner; emulate each GPU type by a compute slowdown."""
    from helix_planner.io.cluster_yaml import load_cluster_yaml
    from helix_planner.models import llama_like
    from helix_planner.planner import PlannerOptions, plan_cluster
    from helix_planner.profiles import load_catalog

    cluster, _ = load_cluster_yaml(path)  # the checkpoint, not the file's `model:`, fixes the shape
    spec = llama_like(name, num_layers=config.num_layers, hidden_size=config.hidden_size,
                      intermediate_size=config.intermediate_size, num_heads=config.num_heads,
                      num_kv_heads=config.num_kv_heads, vocab_size=config.vocab_size, dtype=config.dtype)
    plan = plan_cluster(cluster, spec, PlannerOptions(time_limit=time_limit), progress=lambda line: out(f"  {line}"))
    catalog = load_catalog()
    flops = {n.name: catalog.gpu(n.gpu_type).peak_flops for n in plan.nodes}
    fastest = max(flops.values())
    return plan, {node: fastest / value for node, value in flops.items()}


def sample(http_url: str, prompt: str, max_tokens: int) -> str:
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(http_url + "/v1/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["choices"][0]["text"]
    except urllib.error.HTTPError as err:
        raise ServingError(f"the sample request failed: {err.code} {err.read().decode(errors='replace')}") from None


def wait_ready(http_url: str, fleet: LocalFleet, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(http_url + "/readyz", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise ServingError(f"the front end had no complete pipeline after {timeout:.0f}s; logs are in {fleet.workdir}")


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops `helix up` the way Ctrl-C does."""
    raise KeyboardInterrupt


def up(options: UpOptions, out=print) -> int:
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="helix-up-"))
    checkpoint = options.checkpoint
    if checkpoint is None:
        checkpoint = workdir / "model"
        write_demo_checkpoint(checkpoint)
        out(f"no --model given: wrote a random-weight demo checkpoint to {checkpoint}")
    config = load_model_config(checkpoint)
    name = checkpoint.name if options.checkpoint else "helix-demo"
    if options.cluster_file is not None:
        out(f"planning {options.cluster_file} for {name} ({config.num_layers} layers)")
        plan, slowdowns = cluster_file_plan(options.cluster_file, config, name, options.plan_seconds, out)
    else:
        plan, slowdowns = local_fleet_plan(config, name, options.workers, options.pipelines, options.slowdowns)
    plan_path = workdir / "plan.json"
    plan_path.write_text(plan.to_json())
    with LocalFleet(workdir / "logs") as fleet:
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            children = [fleet.start_worker(plan_path, n.name, checkpoint,
                                           env={"HELIX_SLOWDOWN": str(slowdowns.get(n.name, 1.0))}) for n in plan.nodes]
            endpoints = {c.name: fleet.wait(c, options.ready_timeout).grpc_address for c in children}
            endpoints_path = workdir / "endpoints.json"
            endpoints_path.write_text(json.dumps(endpoints, indent=2))
            frontend = fleet.wait(fleet.start_frontend(plan_path, endpoints_path, checkpoint, model_name=name,
                                                       grpc_port=options.grpc_port, http_port=options.http_port),
                                  options.ready_timeout)
            wait_ready(frontend.http_url, fleet, options.ready_timeout)
            out(f"Helix is serving {name} ({config.num_layers} layers) over {len(plan.nodes)} workers, "
                f"{len(plan.pipelines)} pipeline(s); plan {plan.plan_hash} in {plan_path}")
            for node in plan.nodes:
                out(f"  {node.name:<12} layers [{node.start}, {node.end})  {endpoints[node.name]}  "
                    f"slowdown {slowdowns.get(node.name, 1.0):g}")
            out(f"  KServe v2 gRPC  {frontend.grpc_address}")
            out(f"  OpenAI HTTP     {frontend.http_url}/v1")
            out(f"  metrics         {frontend.http_url}/metrics   (logs: {fleet.workdir})")
            out(f"sample: {options.prompt!r} -> {sample(frontend.http_url, options.prompt, options.max_tokens)!r}")
            if options.exit_after_sample:
                return 0
            out("serving; press Ctrl-C to stop")
            while all(c.process.poll() is None for c in fleet.children if c.name == "frontend"):
                time.sleep(0.5)
            raise ServingError(f"the front end exited; see {frontend.log_path}")
        except KeyboardInterrupt:
            out("stopping workers and front end")
            return 0
        finally:
            signal.signal(signal.SIGTERM, previous)
