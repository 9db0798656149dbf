"""Closed loop: what emulated multi-region fleets serve against what the simulator predicts for them.

    sudo python bench/closed_loop.py            # five placements on two fleets, 12 layers, 8 streams of 128/64
    sudo python bench/closed_loop.py --quick    # CI: max flow and separate on the first fleet; 8 layers, 4 streams
    sudo python bench/closed_loop.py --part routing   # another part on the first fleet (bench/loop/routing.py)

The fleets are bench/closed_loop-fleet.yaml (six workers in three regions, of three speeds) and
closed_loop-fleet2.yaml (six in two regions, another mix). Their GPU types are this machine's CPU,
measured here on the benchmark's checkpoint with one torch thread (the fastest of seven repeats: the
machine is shared, and the median still carried other processes' time), and that 2x and 3x slower
(each such worker runs with HELIX_SLOWDOWN 2 or 3); the measured profile caps every type at
--max-layers layers (so that pipelines span regions, as tiny memories do in the dev cluster). The
network is real: each worker and the front end run in network namespaces of their own, joined by
paths shaped to the file's bandwidths with tc and delayed by its latencies (`helix_worker.fleet.netem`;
needs root), so activations cross the slow links.

Per fleet and placement (the planner's max-flow plan; the serving objective's plan; Swarm; Petals;
separate pipelines; the Helix capacity model exists only for the paper's models, so Helix's own
max-flow placement is not among them), the same plan is simulated and served; placements that come
out alike (same plan hash) are measured once and shown for each. Served: bench/engine.py's built-in
closed-loop client, C streams of token-id prompts, greedy with ignore_eos, warm-up requests left
out; decode tok/s is output tokens over the measured window, TTFT from sending to the first streamed
token. After each, the stages' and the front end's /metrics are read (`helix_worker.fleet.served_metrics`).

The front end routes by IWRR (HELIX_ROUTING=iwrr), as the simulator does; `--part routing` compares
its adaptive routing. Simulated twice, with IWRR, fixed request lengths, seed 0:
- uncalibrated (for reference): the offline protocol with at most C in flight and the profile as
  measured alone. It missed by large factors, either way, and ranked placements by luck: its
  curves are the machine alone (or the machine under whatever else ran while profiling), and its
  offline protocol counts a wait for a free slot in every TTFT (the next request is created when
  the previous one is admitted).
- calibrated (`helix_planner.sim.calibration`, with which `helix up`'s replanner judges its
  candidates too): what had to change, each measured on the first placement served on a fleet and
  then held for the fleet's other placements: decode and prompts run slower than profiled, each by
  its own scale, the median of the stages' recent steps over the profile's for the same steps (the
  stages share two cores with each other, the front end, the relays and the client); every pass
  costs the stages' measured time per step beyond compute (forming it, the compute thread's
  hand-off, sending its outputs; seconds, on every type alike); every message is delayed by the
  measured overhead beyond its link (decode round trip less the decode tokens' time on stages and
  links, per message); passes are formed by the worker engine's rule (decode rows, then prompts
  within its step's token budget); and the load is the client's: its N requests in a closed loop
  of C, timed until the last one finishes (the simulator's closed mode). The serving placement is
  chosen by the serving objective judging its candidates with this calibrated simulator. Each row
  also shows the compute scales its own stages report, and the machine's load as a contention
  probe (`loop.contention`: a one-layer step timed in the bench every 0.2 s) saw it while the
  placement was served.
Errors are simulated / served - 1; ranks compare the distinct plans by decode tok/s (served figures
within 5% count as tied). The served side depends on what else runs on the machine: read the load
average in the results header.
"""

import argparse
import asyncio
import importlib
import math
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
from loop.contention import ContentionProbe
from results import markdown_table, write_table

from helix_planner.cluster import Cluster
from helix_planner.io.cluster_yaml import load_cluster_yaml
from helix_planner.models import ModelSpec
from helix_planner.plan_format import Plan
from helix_planner.planner import PlannerOptions, plan_cluster
from helix_planner.profiles import Catalog, load_catalog
from helix_planner.serving_plan import ServingObjective, plan_for_serving
from helix_planner.sim.calibration import Calibration, ServedMetrics, calibrate, step_ratios
from helix_planner.sim.inputs import scenario_from_plan
from helix_planner.sim.metrics import SimResult
from helix_planner.sim.simulation import SimConfig, Simulation
from helix_planner.sim.workload import LengthTrace, load_lengths
from helix_worker.envs import Settings, env_name
from helix_worker.errors import ServingError
from helix_worker.fleet.emulated import Portals, start_emulated, start_relays
from helix_worker.fleet.launcher import LocalFleet
from helix_worker.fleet.netem import FRONTEND, EmulatedNetwork
from helix_worker.fleet.netns import require_net_admin
from helix_worker.fleet.plans import LOOPBACK, local_catalog, model_spec
from helix_worker.fleet.profile import ProfileOptions, device_memory, measure, write_profile
from helix_worker.fleet.served_metrics import scrape
from helix_worker.fleet.up import wait_ready
from helix_worker.model.config import load_model_config
from helix_worker.model.random_checkpoint import DemoModel, write_demo_checkpoint

FLEET = Path(__file__).with_name("closed_loop-fleet.yaml")
FLEET2 = Path(__file__).with_name("closed_loop-fleet2.yaml")
TIE = 0.05  # served decode figures closer than this share count as tied when ranks are compared
MODEL = "closed-loop"
SLOWDOWNS = (1.0, 2.0, 3.0)  # CPU, CPU-x2, CPU-x3 of the fleet file
WORKER_ENV = {"HELIX_TORCH_THREADS": "1", "HELIX_KV_CACHE_TOKENS": "8192", "HELIX_RECONNECT_SECONDS": "0.2"}
KV_BLOCK_TOKENS = Settings().kv_block_tokens  # the workers' default HELIX_KV_BLOCK_TOKENS
STEP_TOKENS = Settings().max_batch_tokens  # and HELIX_MAX_BATCH_TOKENS
PLACEMENTS = ("max-flow", "serving", "swarm", "petals", "separate")


@dataclass(frozen=True)
class Mode:
    shape: DemoModel
    max_layers: int
    load: Load
    placements: tuple[str, ...]
    plan_seconds: float
    max_seconds: float  # the served window stops sending after this
    fleets: tuple[Path, ...] = (FLEET, FLEET2)  # the first is the one other parts (--part) run on


QUICK = Mode(DemoModel(num_layers=8, hidden_size=128, intermediate_size=352, num_heads=4, num_kv_heads=2), 3,
             Load(concurrency=4, prompt=32, output=16, requests=8), ("max-flow", "separate"), 2.0, 30.0, (FLEET,))
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
    seen: ServedMetrics | None = None  # what the stages and the front end reported
    fleet: str = FLEET.name
    calibrated_tps: float = math.nan  # the simulator calibrated by `calibration`
    calibrated_ttft: float = math.nan
    calibration: Calibration | None = None
    own: Calibration | None = None  # what this placement's own metrics give
    probe_seconds: float = math.nan  # the contention probe's median step while it was served
    contention: float = math.nan  # that over the profile's: the machine's load (shown, not used)


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

    @property
    def reference_step(self) -> float:
        """The profile's one-row decode step of one layer (what `loop.contention` probes), seconds."""
        measured = self.catalog.measurement(self.spec.name, "CPU")
        return measured.decode(1) if measured is not None else math.nan

    def on_fleet(self, fleet: Path) -> "Setup":
        """The same model and catalog on another fleet file."""
        return replace(self, fleet=fleet, cluster=load_cluster_yaml(fleet)[0])

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
    """Each placement on each fleet simulated and served: the table of the two, calibrated and not."""
    rows = placements_on(setup, net, portals)
    for fleet in setup.mode.fleets[1:]:
        other = setup.on_fleet(fleet)
        with emulated(other) as (other_net, other_portals):
            rows += placements_on(other, other_net, other_portals)
    return report(rows, setup.mode)


def placements_on(setup: Setup, net: EmulatedNetwork, portals: Portals) -> list[Row]:
    """The mode's placements on `setup`'s fleet. The first one served measures the calibration, and every
    later one (the serving objective's choice included) is judged by it."""
    mode, cluster, fleet = setup.mode, setup.cluster, setup.fleet.name
    rows: list[Row] = []
    calibration: Calibration | None = None
    for placement in mode.placements:
        plan = make_plan(placement, cluster, setup.spec, setup.catalog, setup.lengths, mode.plan_seconds,
                         calibration=calibration, load=mode.load)
        same = next((r for r in rows if r.plan == plan.plan_hash), None)
        if same is not None:  # methods that place alike: one measurement, shown for each
            say(f"{fleet} {placement}: the same plan as {same.placement}")
            rows.append(replace(same, placement=placement, shape=f"as {same.placement}"))
            continue
        uncalibrated = simulate(plan, cluster, setup.spec, setup.catalog, setup.lengths, mode.load.concurrency)
        say(f"{fleet} {placement}: {describe(plan, cluster)}; simulated uncalibrated "
            f"{uncalibrated.decode_throughput:.1f} tok/s, p95 TTFT {uncalibrated.ttft.p95:.2f} s; serving it")
        row = serve(placement, plan, cluster, net, portals, setup.checkpoint, setup.worker_env(plan),
                    setup.workdir / fleet / placement, mode, uncalibrated)
        contention = row.probe_seconds / setup.reference_step
        row = replace(row, fleet=fleet, contention=contention)
        if row.seen is not None:  # what this placement's own metrics say
            own = calibrate(row.seen, cluster, setup.spec, setup.catalog, f"{placement} on {fleet}", STEP_TOKENS)
            row = replace(row, own=own)
            say(f"{fleet} {placement}: measured {own.describe()}; recent decode steps over the profile, per stage: "
                + ", ".join(f"{node} x{statistics.median(decode):.2f}" for node, (decode, _) in
                            step_ratios(row.seen, cluster, setup.spec, setup.catalog).items() if decode))
            calibration = calibration or own
        if calibration is not None:
            calibrated = simulate(plan, cluster, setup.spec, setup.catalog, setup.lengths, mode.load.concurrency,
                                  calibration=calibration, requests=mode.load.requests)
            row = replace(row, calibrated_tps=calibrated.decode_throughput,
                          calibrated_ttft=calibrated.ttft.p95, calibration=calibration)
            one_scale = simulate(plan, cluster, setup.spec, setup.catalog, setup.lengths, mode.load.concurrency,
                                 calibration=replace(calibration, gpu_scales={}), requests=mode.load.requests)
            say(f"{fleet} {placement}: with one decode scale for every GPU type the calibrated simulation gives "
                f"{one_scale.decode_throughput:.1f} tok/s, p95 TTFT {one_scale.ttft.p95:.2f} s")
        rows.append(row)
        say(f"{fleet} {placement}: served {row.served_tps:.1f} tok/s, p95 TTFT {row.served_ttft:.2f} s; calibrated "
            f"simulation {row.calibrated_tps:.1f} tok/s, p95 TTFT {row.calibrated_ttft:.2f} s")
    return rows


# --part NAME runs PARTS[NAME], or else bench/loop/NAME.py's `run(setup, net, portals) -> str` (Markdown),
# written to docs/results/closed_loop.md (placements) or closed_loop-NAME.md.
PARTS: dict[str, Callable[[Setup, EmulatedNetwork, Portals], str]] = {"placements": placements}
HOOKED = ("routing", "replan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="CI: two placements, first fleet, smaller model")
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
                                      decode_batches=(1, 2, 4, 8, 16), decode_context=64, repeats=7,
                                      fastest=True),
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
              seconds: float, *, calibration: Calibration | None = None, load: Load | None = None) -> Plan:
    """The placement's plan; the serving objective judges its candidates by the calibrated simulator
    under `load` when a `calibration` and a load are given, else saturated and uncalibrated."""
    options = PlannerOptions(time_limit=seconds, threads=1, throughput_model="profiled")
    if placement == "serving":
        window = (calibration.config(load.concurrency, load.requests, seed=1)
                  if calibration is not None and load is not None else SimConfig(warmup=20.0, duration=120.0, seed=1))
        objective = ServingObjective(window=window)
        return plan_for_serving(cluster, spec, options, lengths, objective, catalog=catalog)[0]
    return plan_cluster(cluster, spec, replace(options, method="auto" if placement == "max-flow" else placement),
                        catalog=catalog)


def simulate(plan: Plan, cluster: Cluster, spec: ModelSpec, catalog: Catalog, lengths: LengthTrace,
             concurrency: int, *, calibration: Calibration | None = None, requests: int = 0) -> SimResult:
    """The plan simulated: calibrated (`requests` in a closed loop of `concurrency` clients), or as before
    calibration (the offline protocol capped at `concurrency` in flight, the profile as measured alone)."""
    scenario = scenario_from_plan(plan, cluster, spec, catalog, plan.solver.method)
    config = (calibration.config(concurrency, requests) if calibration is not None and requests else
              SimConfig(mode="offline", warmup=30.0, duration=300.0, seed=0, max_in_flight=concurrency,
                        offline_initial=concurrency))
    return Simulation(scenario, "iwrr", config, lengths).run()


def serve(placement: str, plan: Plan, cluster: Cluster, net: EmulatedNetwork, portals: Portals, checkpoint: Path,
          env: dict[str, dict[str, str]], workdir: Path, mode: Mode, simulated: SimResult,
          routing: str = "iwrr") -> Row:
    """Start the plan's workers (with `env` each) and the front end routing by `routing` (HELIX_ROUTING; IWRR
    by default, which the simulator models), run the closed loop, stop them."""
    workdir.mkdir(parents=True, exist_ok=True)
    plan_path = workdir / "plan.json"
    plan_path.write_text(plan.to_json())
    with LocalFleet(workdir / "logs") as fleet:
        frontend_env = WORKER_ENV | {env_name("routing"): routing}
        served = start_emulated(fleet, net, portals, plan, plan_path, checkpoint, env | {FRONTEND: frontend_env},
                                model_name=MODEL, timeout=120)
        wait_ready(served.http_url, fleet, 120)
        with ContentionProbe(checkpoint) as probe:
            seen = asyncio.run(closed_loop(served.http_url, MODEL, mode.load, mode.max_seconds))
        observed = scrape(fleet, net, served.http_url)
    for node, stage in observed.stages.items():
        say(f"  {node}: {stage.steps:.0f} steps of {stage.mean_batch:.2f} requests, {stage.mean_step * 1e3:.1f} ms "
            f"each on the compute thread, {stage.mean_overhead * 1e3:.1f} ms per step beyond compute; "
            f"{stage.mean_hop * 1e3:.1f} ms per decode token here, queue included")
    for nodes, (steps, seconds) in observed.round_trips.items():
        say(f"  {'>'.join(nodes)}: decode round trip {seconds / max(steps, 1) * 1e3:.1f} ms")
    return Row(placement, plan.plan_hash, describe(plan, cluster), seen.tokens / seen.elapsed,
               simulated.decode_throughput, percentile(seen.ttfts, 95) / 1e3, simulated.ttft.p95, len(seen.ttfts),
               seen.errors, observed, probe_seconds=probe.seconds())


def describe(plan: Plan, cluster: Cluster) -> str:
    """The pipelines as their stages' regions, alike ones counted, e.g. `2x us-east>eu-west>ap-south`."""
    shapes = Counter(">".join(cluster.node(s.node).region for s in p.stages) for p in plan.pipelines)
    return "; ".join(f"{count}x {shape}" for shape, count in shapes.items())


def report(rows: list[Row], mode: Mode) -> str:
    load = mode.load
    header = ("fleet", "placement", "plan", "pipelines (stage regions)", "served decode tok/s", "calibrated sim",
              "error", "uncalibrated sim", "error", "served p95 TTFT s", "calibrated sim", "error",
              "uncalibrated sim", "error", "requests (errors)", "probed machine slowdown",
              "own compute scales (decode, prompts)")
    table = markdown_table(header, [
        (r.fleet, f"{r.placement} *" if r.calibration and r.calibration.source.startswith(f"{r.placement} on ")
         else r.placement, r.plan[:8], r.shape, f"{r.served_tps:.1f}", f"{r.calibrated_tps:.1f}",
         _error(r.calibrated_tps, r.served_tps), f"{r.simulated_tps:.1f}", _error(r.simulated_tps, r.served_tps),
         f"{r.served_ttft:.2f}", f"{r.calibrated_ttft:.2f}", _error(r.calibrated_ttft, r.served_ttft),
         f"{r.simulated_ttft:.2f}", _error(r.simulated_ttft, r.served_ttft), f"{r.finished} ({r.errors})",
         f"x{r.contention:.2f}", f"x{r.own.compute_scale:.2f}, x{r.own.prompt_scale:.2f}" if r.own else "n/a")
        for r in rows])
    ranks = markdown_table(("fleet", "served ranking", "calibrated sim ranking", "agree (ties within "
                            f"{TIE:.0%})", "strictly", "uncalibrated sim ranking", "agree", "largest calibrated "
                            "decode error"), [rank_row(fleet, [r for r in rows if r.fleet == fleet])
                                              for fleet in dict.fromkeys(r.fleet for r in rows)])
    calibrations = {r.fleet: r.calibration.describe() for r in rows if r.calibration is not None}
    summary = (f"Load: {load.concurrency} closed-loop streams, prompts of {load.prompt} tokens, {load.output} output "
               f"tokens, {load.requests} measured requests; model {mode.shape.num_layers} layers, hidden "
               f"{mode.shape.hidden_size}, at most {mode.max_layers} layers per worker. Calibration (measured on "
               f"the placement marked *, then held for the fleet's others): "
               f"{'; '.join(f'{fleet}: {text}' for fleet, text in calibrations.items()) or 'none'}. "
               f"Errors are simulated / served - 1. Probed machine slowdown: a one-layer step timed in the bench's "
               f"process while the placement was served, over the profile's (the machine's load; not used). Own "
               f"compute scales: what each placement's own stages report (only the starred one's are used).")
    return f"{summary}\n\n{table}\n\nRanks of the distinct plans by decode tok/s:\n\n{ranks}\n"


def rank_row(fleet: str, rows: list[Row]) -> tuple[str, ...]:
    plans = list({r.plan: r for r in rows if not r.shape.startswith("as ")}.values())

    def order(key: Callable[[Row], float]) -> list[Row]:
        return sorted(plans, key=key, reverse=True)

    def agree(simulated: Callable[[Row], float], tie: float) -> bool:
        """Every pair the simulator orders one way is not served clearly (by more than `tie`) the other way."""
        return all(not (simulated(a) > simulated(b) and b.served_tps > a.served_tps * (1 + tie))
                   for a in plans for b in plans)

    def names(ranked: list[Row]) -> str:
        return " > ".join(r.placement for r in ranked)

    worst = max((abs(r.calibrated_tps / r.served_tps - 1) for r in plans if r.served_tps > 0), default=math.nan)
    return (fleet, names(order(lambda r: r.served_tps)), names(order(lambda r: r.calibrated_tps)),
            _yes(agree(lambda r: r.calibrated_tps, TIE)), _yes(agree(lambda r: r.calibrated_tps, 0.0)),
            names(order(lambda r: r.simulated_tps)), _yes(agree(lambda r: r.simulated_tps, 0.0)), f"{worst:.0%}")


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _error(simulated: float, served: float) -> str:
    return f"{simulated / served - 1:+.0%}" if served > 0 and math.isfinite(simulated) else "n/a"


if __name__ == "__main__":
    sys.exit(main())
