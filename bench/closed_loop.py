"""Closed loop: what an emulated multi-region fleet serves against what the simulator predicts for it.

    sudo python bench/closed_loop.py            # five placements, a 12-layer model, 8 streams of 128/64
    sudo python bench/closed_loop.py --quick    # CI: max flow, Swarm, separate; 8 layers, 4 streams of 32/16
    sudo python bench/closed_loop.py --part routing   # another part on the same fleet (bench/loop/routing.py)

The fleet is bench/closed_loop-fleet.yaml: six workers in three regions, of three speeds. Its GPU
types are this machine's CPU, measured here on the benchmark's checkpoint with one torch thread (the
planner's and the simulator's curves, as `helix up` measures a local fleet), and that 2x and 3x
slower (each such worker runs with HELIX_SLOWDOWN 2 or 3); the measured profile caps every type at
--max-layers layers (so that pipelines span regions, as tiny memories do in the dev cluster). The
network is real: each worker and the front end run in network namespaces of their own, joined by
paths shaped to the file's bandwidths with tc and delayed by its latencies (`helix_worker.fleet.netem`;
needs root), so activations cross the slow links.

Per placement (the planner's max-flow plan; the serving objective's plan, max-flow candidates judged
by the simulator; Swarm; Petals; separate pipelines; the Helix capacity model exists only for the
paper's models, so Helix's own max-flow placement is not among them), the same plan is simulated and
served; placements that come out alike (same plan hash) are measured once and shown for each.
Served: bench/engine.py's built-in closed-loop client, C streams of token-id prompts, greedy with
ignore_eos, warm-up requests left out; decode tok/s is output tokens over the measured window,
TTFT from sending to the first streamed token. Simulated: the offline mode with at most C requests in
flight (the same closed loop), the front end's IWRR scheduler, fixed request lengths, seed 0. The
ratio is served / simulated. Nothing is calibrated: this is the gap the closed loop has to close.
On a two-core machine shared with other work the served side is slowed by contention the simulator
does not model (six workers, the front end, the relays and the client on two cores), so read the
load average in the results header.
"""

import argparse
import asyncio
import importlib
import statistics
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from engine import Load, closed_loop, percentile
from results import markdown_table, write_table

from helix_planner.cluster import Cluster
from helix_planner.io.cluster_yaml import load_cluster_yaml
from helix_planner.models import ModelSpec
from helix_planner.plan_format import Plan
from helix_planner.planner import PlannerOptions, plan_cluster
from helix_planner.profiles import Catalog, load_catalog
from helix_planner.serving_plan import ServingObjective, plan_for_serving
from helix_planner.sim.inputs import scenario_from_plan
from helix_planner.sim.metrics import SimResult
from helix_planner.sim.simulation import SimConfig, Simulation
from helix_planner.sim.workload import LengthTrace, load_lengths
from helix_worker.envs import Settings
from helix_worker.errors import ServingError
from helix_worker.fleet.emulated import Portals, start_emulated, start_relays
from helix_worker.fleet.launcher import LocalFleet
from helix_worker.fleet.netem import FRONTEND, EmulatedNetwork
from helix_worker.fleet.netns import require_net_admin
from helix_worker.fleet.plans import LOOPBACK, local_catalog, model_spec
from helix_worker.fleet.profile import ProfileOptions, device_memory, measure, write_profile
from helix_worker.fleet.up import wait_ready
from helix_worker.model.config import load_model_config
from helix_worker.model.random_checkpoint import DemoModel, write_demo_checkpoint

FLEET = Path(__file__).with_name("closed_loop-fleet.yaml")
MODEL = "closed-loop"
SLOWDOWNS = (1.0, 2.0, 3.0)  # CPU, CPU-x2, CPU-x3 of the fleet file
WORKER_ENV = {"HELIX_TORCH_THREADS": "1", "HELIX_KV_CACHE_TOKENS": "8192", "HELIX_RECONNECT_SECONDS": "0.2"}
KV_BLOCK_TOKENS = Settings().kv_block_tokens  # the workers' default HELIX_KV_BLOCK_TOKENS
PLACEMENTS = ("max-flow", "serving", "swarm", "petals", "separate")


@dataclass(frozen=True)
class Mode:
    shape: DemoModel
    max_layers: int
    load: Load
    placements: tuple[str, ...]
    plan_seconds: float
    max_seconds: float  # the served window stops sending after this


QUICK = Mode(DemoModel(num_layers=8, hidden_size=128, intermediate_size=352, num_heads=4, num_kv_heads=2), 3,
             Load(concurrency=4, prompt=32, output=16, requests=8), ("max-flow", "swarm", "separate"), 2.0, 30.0)
FULL = Mode(DemoModel(num_layers=12, hidden_size=512, intermediate_size=1408, num_heads=8, num_kv_heads=4), 4,
            Load(concurrency=8, prompt=128, output=64, requests=32), PLACEMENTS, 10.0, 240.0)


@dataclass(frozen=True)
class Row:
    placement: str
    plan: str  # its hash
    shape: str  # pipelines as stage counts and regions
    served_tps: float
    simulated_tps: float
    served_ttft: float  # p95, seconds
    simulated_ttft: float
    finished: int
    errors: int


@dataclass(frozen=True)
class Setup:
    """What every part of the bench shares: the mode, the checkpoint and its measured catalog, the fleet."""
    mode: Mode
    workdir: Path
    checkpoint: Path
    spec: ModelSpec
    catalog: Catalog
    slowdowns: dict[str, float]  # GPU type -> HELIX_SLOWDOWN
    fleet: Path
    cluster: Cluster
    lengths: LengthTrace

    def worker_env(self, plan: Plan) -> dict[str, dict[str, str]]:
        """Each of the plan's workers' environment: WORKER_ENV and its type's slowdown."""
        return {n.name: WORKER_ENV | {"HELIX_SLOWDOWN": f"{self.slowdowns[self.cluster.node(n.name).gpu]:g}"}
                for n in plan.nodes}


def prepare(mode: Mode, workdir: Path, fleet: Path = FLEET) -> Setup:
    """Write the checkpoint, measure this CPU on it, load `fleet`."""
    checkpoint = workdir / MODEL
    write_demo_checkpoint(checkpoint, mode.shape)
    spec = model_spec(load_model_config(checkpoint), MODEL)
    catalog, types = measured_catalog(checkpoint, spec, mode.max_layers, workdir, say)
    cluster, _ = load_cluster_yaml(fleet)
    return Setup(mode, workdir, checkpoint, spec, catalog, {name: slowdown for slowdown, name in types.items()},
                 fleet, cluster, load_lengths(f"fixed:{mode.load.prompt},{mode.load.output}", workdir))


@contextmanager
def emulated(setup: Setup) -> Iterator[tuple[EmulatedNetwork, Portals]]:
    """The fleet's emulated network (a namespace per worker and the front end) and its relays."""
    cluster = setup.cluster
    with EmulatedNetwork(cluster, [n.name for n in cluster.nodes] + [FRONTEND], setup.workdir / "net") as net:
        yield net, start_relays(net, cluster.node_names)


def placements(setup: Setup, net: EmulatedNetwork, portals: Portals) -> str:
    """Each placement simulated and served; the table of the two."""
    mode, cluster = setup.mode, setup.cluster
    rows: list[Row] = []
    for placement in mode.placements:
        plan = make_plan(placement, cluster, setup.spec, setup.catalog, setup.lengths, mode.plan_seconds)
        same = next((r for r in rows if r.plan == plan.plan_hash), None)
        if same is not None:  # methods that place alike: one measurement, shown for each
            say(f"{placement}: the same plan as {same.placement}")
            rows.append(replace(same, placement=placement, shape=f"as {same.placement}"))
            continue
        simulated = simulate(plan, cluster, setup.spec, setup.catalog, setup.lengths, mode.load.concurrency)
        say(f"{placement}: {describe(plan, cluster)}; simulated {simulated.decode_throughput:.1f} tok/s, "
            f"p95 TTFT {simulated.ttft.p95:.2f} s; serving it")
        rows.append(serve(placement, plan, cluster, net, portals, setup.checkpoint, setup.worker_env(plan),
                          setup.workdir / placement, mode, simulated))
        say(f"{placement}: served {rows[-1].served_tps:.1f} tok/s, p95 TTFT {rows[-1].served_ttft:.2f} s")
    return report(rows, mode)


# --part NAME runs PARTS[NAME], or else bench/loop/NAME.py's `run(setup, net, portals) -> str` (Markdown),
# written to docs/results/closed_loop.md (placements) or closed_loop-NAME.md.
PARTS: dict[str, Callable[[Setup, EmulatedNetwork, Portals], str]] = {"placements": placements}
HOOKED = ("routing", "replan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI: three placements, a smaller model and load")
    parser.add_argument("--workdir", type=Path, help="plans, logs and the checkpoint (default: a temp dir)")
    parser.add_argument("--part", choices=(*PARTS, *HOOKED), default="placements", help="what to measure")
    args = parser.parse_args(argv)
    try:
        require_net_admin()
    except ServingError as err:
        print(f"closed_loop: {err}", file=sys.stderr)
        return 2
    part = PARTS.get(args.part) or importlib.import_module(f"loop.{args.part}").run
    setup = prepare(QUICK if args.quick else FULL, args.workdir or Path(tempfile.mkdtemp(prefix="helix-closed-loop-")))
    with emulated(setup) as (net, portals):
        text = part(setup, net, portals)
    print(text)
    write_table("closed_loop" if args.part == "placements" else f"closed_loop-{args.part}", text)
    return 0


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def measured_catalog(checkpoint: Path, spec: ModelSpec, max_layers: int, workdir: Path,
                     say: Callable[[str], None]) -> tuple[Catalog, dict[float, str]]:
    """This CPU measured on the checkpoint with one thread (as each worker runs), capped at `max_layers`
    with the workers' KV room, and its 2x and 3x slower types, as `helix up` registers a local fleet's."""
    torch.set_num_threads(1)
    document = measure(ProfileOptions(checkpoint, "CPU", torch.device("cpu"), layers=1, prompt_tokens=(16, 64, 256),
                                      decode_batches=(1, 4, 16), decode_context=64, repeats=3),
                       log=lambda line: say(f"  {line}"))
    document["model"] = spec.name
    blocks = int(WORKER_ENV["HELIX_KV_CACHE_TOKENS"]) // KV_BLOCK_TOKENS  # what each worker holds, for any layer count
    document["measured"]["CPU"] |= {"maxLayers": max_layers, "blockSize": KV_BLOCK_TOKENS,
                                    "kvBlocks": {k: blocks for k in range(1, max_layers + 1)}}
    profile = workdir / "measured.yaml"
    write_profile(document, profile)
    local = replace(load_catalog().gpu("CPU"), vram_bytes=device_memory(torch.device("cpu")) / 6,
                    nic_bytes_per_s=LOOPBACK.bandwidth, labels=())
    return local_catalog(profile, spec.name, local, SLOWDOWNS)


def make_plan(placement: str, cluster: Cluster, spec: ModelSpec, catalog: Catalog, lengths: LengthTrace,
              seconds: float) -> Plan:
    options = PlannerOptions(time_limit=seconds, threads=1, throughput_model="profiled")
    if placement == "serving":
        objective = ServingObjective(window=SimConfig(warmup=20.0, duration=120.0, seed=1))
        return plan_for_serving(cluster, spec, options, lengths, objective, catalog=catalog)[0]
    return plan_cluster(cluster, spec, replace(options, method="auto" if placement == "max-flow" else placement),
                        catalog=catalog)


def simulate(plan: Plan, cluster: Cluster, spec: ModelSpec, catalog: Catalog, lengths: LengthTrace,
             concurrency: int) -> SimResult:
    scenario = scenario_from_plan(plan, cluster, spec, catalog, plan.solver.method)
    config = SimConfig(mode="offline", warmup=30.0, duration=300.0, seed=0, max_in_flight=concurrency,
                       offline_initial=concurrency)
    return Simulation(scenario, "iwrr", config, lengths).run()


def serve(placement: str, plan: Plan, cluster: Cluster, net: EmulatedNetwork, portals: Portals, checkpoint: Path,
          env: dict[str, dict[str, str]], workdir: Path, mode: Mode, simulated: SimResult) -> Row:
    """Start the plan's workers (with `env` each) and the front end, run the closed loop, stop them."""
    workdir.mkdir(parents=True, exist_ok=True)
    plan_path = workdir / "plan.json"
    plan_path.write_text(plan.to_json())
    with LocalFleet(workdir / "logs") as fleet:
        served = start_emulated(fleet, net, portals, plan, plan_path, checkpoint, env | {FRONTEND: WORKER_ENV},
                                model_name=MODEL, timeout=120)
        wait_ready(served.http_url, fleet, 120)
        seen = asyncio.run(closed_loop(served.http_url, MODEL, mode.load, mode.max_seconds))
    return Row(placement, plan.plan_hash, describe(plan, cluster), seen.tokens / seen.elapsed,
               simulated.decode_throughput, percentile(seen.ttfts, 95) / 1e3, simulated.ttft.p95, len(seen.ttfts),
               seen.errors)


def describe(plan: Plan, cluster: Cluster) -> str:
    """The pipelines as their stages' regions, alike ones counted, e.g. `2x us-east>eu-west>ap-south`."""
    shapes = Counter(">".join(cluster.node(s.node).region for s in p.stages) for p in plan.pipelines)
    return "; ".join(f"{count}x {shape}" for shape, count in shapes.items())


def report(rows: list[Row], mode: Mode) -> str:
    load = mode.load
    header = ("placement", "plan", "pipelines (stage regions)", "served decode tok/s", "simulated", "served/sim",
              "served p95 TTFT s", "simulated", "served/sim", "requests (errors)")
    table = markdown_table(header, [
        (r.placement, r.plan[:8], r.shape, f"{r.served_tps:.1f}", f"{r.simulated_tps:.1f}",
         _ratio(r.served_tps, r.simulated_tps), f"{r.served_ttft:.2f}", f"{r.simulated_ttft:.2f}",
         _ratio(r.served_ttft, r.simulated_ttft), f"{r.finished} ({r.errors})") for r in rows])
    ratios = [r.served_tps / r.simulated_tps for r in {r.plan: r for r in rows}.values() if r.simulated_tps > 0]
    summary = (f"Load: {load.concurrency} closed-loop streams, prompts of {load.prompt} tokens, {load.output} output "
               f"tokens, {load.requests} measured requests; model {mode.shape.num_layers} layers, hidden "
               f"{mode.shape.hidden_size}, at most {mode.max_layers} layers per worker. Fleet: {FLEET.name}. "
               f"Mean served/simulated decode ratio over distinct plans {statistics.mean(ratios):.2f}."
               if ratios else "")
    return f"{summary}\n\n{table}\n"


def _ratio(served: float, simulated: float) -> str:
    return f"{served / simulated:.2f}" if simulated > 0 else "n/a"


if __name__ == "__main__":
    sys.exit(main())
