"""`helix up`: plan a local fleet, start its workers and the front end on 127.0.0.1, serve.

The fleet is N workers on this machine (optionally slowed down per worker to emulate unlike
GPUs) or a cluster YAML file; either way the planner places the layers (see `fleet_plan`).
It prints the plan (throughput estimate, layer ranges, pipelines, unused workers), starts
exactly the plan's nodes with their slowdowns, prints the endpoints and a sample
generation, then serves until Ctrl-C (or exits after the sample with `exit_after_sample`),
always stopping every child. The fleet is its own cluster: a throwaway CA in the work
directory signs a certificate for each child, and every hop between them uses mutual TLS.
With `emulate_network` a cluster file's regions become network namespaces joined by paths
shaped to its bandwidths and latencies (`netem`, `emulated`), so activations really cross
slow links; this needs root (CAP_NET_ADMIN).

Unless told not to (`replan`), clients reach the front end through a public entry of relays
(`entry`), and `helix up` watches the capacity the fleet serves with: when a worker turns slower
or a link loses bandwidth for long enough (`replan.Replanner`), it plans again with what it
observed, judges the candidates by the simulator calibrated to the serving fleet
(`served_metrics`), and rolls the best out blue/green (`rollout`), with no request lost. Each worker's
slowdown can be changed while it runs (its HELIX_SLOWDOWN_FILE, printed), to watch that happen.
"""

import contextlib
import json
import os
import signal
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from helix_planner.io.cluster_yaml import load_cluster_yaml
from helix_planner.observed import DriftTracker
from helix_planner.report import plan_table
from helix_worker.envs import Settings, env_name
from helix_worker.errors import ServingError
from helix_worker.fleet.delayline import stop_relays
from helix_worker.fleet.emulated import start_relays
from helix_worker.fleet.entry import start_loopback_entry
from helix_worker.fleet.netem import FRONTEND, EmulatedNetwork
from helix_worker.fleet.netns import require_net_admin
from helix_worker.fleet.plans import (
    CLUSTER_PLAN_SECONDS,
    LOCAL_PLAN_SECONDS,
    FleetPlan,
    check_local_fleet,
    cluster_file_plan,
    local_fleet_plan,
)
from helix_worker.fleet.replan import Replanner
from helix_worker.fleet.rollout import Generation, Launch, roll_out, start_generation, switch, wait_ready
from helix_worker.fleet.served_metrics import scrape
from helix_worker.model.config import ModelConfig, load_model_config
from helix_worker.model.random_checkpoint import write_demo_checkpoint


@dataclass(frozen=True)
class UpOptions:
    checkpoint: Path | None = None
    cluster_file: Path | None = None
    workers: int = 3
    slowdowns: tuple[float, ...] = ()  # one per worker; empty: all 1
    workdir: Path | None = None
    grpc_port: int = 8001
    http_port: int = 8000
    prompt: str = "Helix serves"
    max_tokens: int = 16
    exit_after_sample: bool = False
    ready_timeout: float = 180.0
    plan_seconds: float | None = None  # None: LOCAL_PLAN_SECONDS, or CLUSTER_PLAN_SECONDS with a cluster file
    emulate_network: bool = False  # a cluster file's regions as network namespaces and shaped paths (`netem`)
    replan: bool = True  # replan from observed capacity and roll the new plan out
    replan_debounce: float = 30.0  # seconds a drift must last before it counts


def sample(http_url: str, prompt: str, max_tokens: int) -> str:
    body = json.dumps({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}).encode()
    request = urllib.request.Request(http_url + "/v1/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            text = json.loads(response.read())["choices"][0]["text"]
        if not isinstance(text, str):
            raise ServingError(f"the sample answer's text is {type(text).__name__}, not a string")
        return text
    except urllib.error.HTTPError as err:
        raise ServingError(f"the sample request failed: {err.code} {err.read().decode(errors='replace')}") from None


def _interrupt(signum: int, frame: object) -> None:
    """SIGTERM stops `helix up` the way Ctrl-C does."""
    raise KeyboardInterrupt


def worker_env(workers: int, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Variables every local worker gets on top of this environment: unless HELIX_TORCH_THREADS is
    set, the machine's cores shared out among the workers. torch's default, every core in every
    process, makes the workers' thread teams wait on each other at every barrier (on two cores
    with a load running beside it: 64 ms for a 16-request decode step with one thread, 98 ms with
    two). A lone worker keeps every core: leaving one to the front end, as vLLM leaves one to its
    API server, cost it a quarter to two thirds of its tokens/s in `bench/engine.py`."""
    environ = dict(os.environ) if environ is None else environ
    if environ.get(env_name("torch_threads")):
        return {}
    return {env_name("torch_threads"): str(max(1, (os.cpu_count() or 1) // max(1, workers)))}


def make_plan(options: UpOptions, checkpoint: Path, config: ModelConfig, name: str, workdir: Path,
              shared: dict[str, str], out: Callable[[str], None] = print) -> FleetPlan:
    """The planner's placement of the cluster file, or of the local workers as measured here (with
    the `shared` variables every worker gets)."""
    settings = Settings.from_env(os.environ | shared)  # what the workers will run with (device, dtype, threads)
    if options.cluster_file is not None:
        return cluster_file_plan(options.cluster_file, config, name, settings,
                                 options.plan_seconds or CLUSTER_PLAN_SECONDS, out)
    return local_fleet_plan(checkpoint, config, name, options.slowdowns or (1.0,) * options.workers, workdir,
                            settings, options.plan_seconds or LOCAL_PLAN_SECONDS, out)


def report_plan(fleet_plan: FleetPlan, out: Callable[[str], None] = print) -> None:
    """The planner's summary, then every node the plan leaves out."""
    out(plan_table(fleet_plan.plan).rstrip())
    for name in fleet_plan.unused:
        out(f"{name} (slowdown {fleet_plan.slowdowns[name]:g}) is left unused by the plan: not started")


def up(options: UpOptions, out: Callable[[str], None] = print) -> int:
    if options.cluster_file is None:
        check_local_fleet(options.workers, options.slowdowns)
        if options.emulate_network:
            raise ServingError("--emulate-network emulates a cluster file's regions: give --cluster FILE")
    if options.emulate_network:
        require_net_admin()  # before planning, which takes a while
    workdir = options.workdir or Path(tempfile.mkdtemp(prefix="helix-up-"))
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = options.checkpoint
    if checkpoint is None:
        checkpoint = workdir / "model"
        write_demo_checkpoint(checkpoint)
        out(f"no --model given: wrote a random-weight demo checkpoint to {checkpoint}")
    config = load_model_config(checkpoint)
    name = checkpoint.name if options.checkpoint else "helix-demo"
    shared = worker_env(options.workers)  # a local fleet is measured with the threads its workers get
    fleet_plan = make_plan(options, checkpoint, config, name, workdir, shared, out)
    if options.cluster_file is not None:
        shared = worker_env(len(fleet_plan.plan.nodes))
    report_plan(fleet_plan, out)
    plan, slowdowns = fleet_plan.plan, fleet_plan.slowdowns
    with contextlib.ExitStack() as stack:
        previous = signal.signal(signal.SIGTERM, _interrupt)
        stack.callback(signal.signal, signal.SIGTERM, previous)
        try:
            net, portals = None, None
            if options.emulate_network and options.cluster_file is not None:
                cluster = load_cluster_yaml(options.cluster_file)[0]
                net = stack.enter_context(EmulatedNetwork(cluster, cluster.node_names + [FRONTEND], workdir / "net"))
                portals = start_relays(net, cluster.node_names, grpc_port=options.grpc_port,
                                       http_port=options.http_port)
            elif options.replan:
                entry, portals = start_loopback_entry(workdir / "entry", options.grpc_port, options.http_port)
                stack.callback(stop_relays, entry)
            launch = Launch(workdir, checkpoint, name, shared, net, portals, options.grpc_port, options.http_port,
                            options.ready_timeout)
            serving = [start_generation(launch, 0, fleet_plan)]
            stack.callback(lambda: serving[-1].fleet.stop())  # stopped before the network and the entry go
            switch(launch, serving[0])
            served, fleet = serving[0].served, serving[0].fleet
            wait_ready(served.http_url, fleet, options.ready_timeout)
            out(f"Helix is serving {name} ({config.num_layers} layers) over {len(plan.nodes)} workers, "
                f"{len(plan.pipelines)} pipeline(s); plan {plan.plan_hash} in {serving[0].plan_path}")
            for node in plan.nodes:
                out(f"  {node.name:<12} layers [{node.start}, {node.end})  {served.endpoints[node.name]}  "
                    f"slowdown {slowdowns[node.name]:g}")
            out(f"  KServe v2 gRPC  {served.grpc_address}")
            out(f"  OpenAI HTTP     {served.http_url}/v1")
            out(f"  metrics         {served.http_url}/metrics   (logs: {fleet.workdir})")
            out(f"  stage network   mutual TLS, certificates of a throwaway CA in {fleet.workdir / 'tls'}")
            if net is not None:
                out(f"  emulated net    a namespace per host, paths shaped as in {net.workdir / 'network.json'}")
            out(f"  slow a worker   echo 2 > {launch.slowdown_file('NODE')}   (while it runs)")
            out(f"sample: {options.prompt!r} -> {sample(served.http_url, options.prompt, options.max_tokens)!r}")
            if options.exit_after_sample:
                return 0
            out("serving; press Ctrl-C to stop")
            settings = Settings.from_env(os.environ | shared)
            replanner = Replanner(lambda generation: scrape(generation.fleet, net, generation.served.ready_url),
                                  DriftTracker(debounce_seconds=options.replan_debounce), routing=settings.routing,
                                  step_tokens=settings.max_batch_tokens, out=out)
            serve(launch, serving, replanner if options.replan else None, out)
            raise ServingError(f"the front end exited; see {serving[-1].fleet.workdir / 'frontend.log'}")
        except KeyboardInterrupt:
            out("stopping workers and front end")
            return 0


def serve(launch: Launch, serving: list[Generation], replanner: Replanner | None, out: Callable[[str], None]) -> None:
    """Until the serving front end exits: ask `replanner` for a better plan now and then, roll each
    one out (appended to `serving`); a rollout that fails leaves the serving plan serving."""
    while serving[-1].served.frontend.process.poll() is None:
        time.sleep(0.5)
        better = replanner.check(serving[-1]) if replanner is not None else None
        if better is not None:
            try:
                serving.append(roll_out(launch, serving[-1], better, out))
            except ServingError as err:
                out(f"rolling out plan {better.plan.plan_hash} failed, plan {serving[-1].fleet_plan.plan.plan_hash} "
                    f"serves on: {err}")
