"""`helix simulate`: what throughput and latency a plan gives, before touching a cluster."""

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

from numpy.random import default_rng

from helix_planner.io.cluster_files import DEFAULT_CLUSTER
from helix_planner.profiles import load_catalog
from helix_planner.sim.inputs import load_scenario
from helix_planner.sim.plots import write_plots
from helix_planner.sim.report import summary_text
from helix_planner.sim.schedulers import SCHEDULERS, scheduler_class
from helix_planner.sim.simulation import MODES, SimConfig, Simulation
from helix_planner.sim.workload import (
    LENGTH_TRACES,
    SYNTHETIC_CONV,
    arrival_times,
    default_lengths,
    default_traces_dir,
    load_lengths,
)
from helix_planner.status import StatusLine

QUICK_WARMUP, QUICK_DURATION = 60.0, 120.0


def add_simulate_command(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    sim = subparsers.add_parser("simulate", help="discrete-event simulation of serving on a cluster",
                                description=__doc__)
    sim.add_argument("cluster", nargs="?", default=DEFAULT_CLUSTER,
                     help=f"cluster file (.yaml or Helix .ini) or bundled example (default {DEFAULT_CLUSTER})")
    sim.add_argument("--layout", help="Helix [Solution] .ini, plan .json, or a baseline (petals, swarm, separate); "
                                      "default: plan the cluster now")
    sim.add_argument("--partial-inference", action="store_true", help="stages may start inside a node's range")
    sim.add_argument("--model", help="model name (default: the cluster file's, else llama2-70b)")
    sim.add_argument("--throughput-model", choices=("profiled", "helix"), default="profiled",
                     help="capacity model for the flow the pipelines follow (and for planning)")
    sim.add_argument("--catalog", type=Path, action="append", default=[], help="extra GPU catalog dir or file")
    sim.add_argument("--plan-time-limit", type=float, default=30.0, help="seconds to plan when no --layout")
    sim.add_argument("--scheduler", default="iwrr", help=f"one of {', '.join(SCHEDULERS)} (default iwrr)")
    sim.add_argument("--mode", choices=MODES, default="offline",
                     help="offline: saturated; online: --rate arrivals; closed: a loop of --clients")
    sim.add_argument("--clients", type=int, default=0, help="closed: requests in the loop, each followed by the next")
    sim.add_argument("--rate", type=float, default=0.0, help="online: mean requests per second")
    sim.add_argument("--arrivals", default="poisson", help="online: poisson, gamma:CV, azure-conv or azure-code")
    sim.add_argument("--lengths",
                     help=f"request lengths: {', '.join(LENGTH_TRACES)}, {SYNTHETIC_CONV}, a CSV path, or "
                          f"fixed:IN,OUT (default: azure-conv from the reference traces when found, else "
                          f"{SYNTHETIC_CONV}, its bundled look-alike)")
    sim.add_argument("--traces", type=Path, help="folder of the reference traces (default $HELIX_REFERENCE/traces)")
    sim.add_argument("--warmup", type=float, default=60.0, help="simulated seconds before measuring (default 60)")
    sim.add_argument("--duration", type=float, default=600.0, help="measured simulated seconds (default 600)")
    sim.add_argument("--quick", action="store_true",
                     help=f"short run for CI: {QUICK_WARMUP:g} s warm-up, {QUICK_DURATION:g} s measured")
    sim.add_argument("--seed", type=int, default=0)
    sim.add_argument("--kv-high-water", type=float, default=0.9, help="share of each KV cache admission may reserve")
    sim.add_argument("--max-in-flight", type=int, help="cap on admitted requests (the paper's baseline protocol)")
    sim.add_argument("--slo-ttft", type=float, default=5.0, help="TTFT target in seconds (default 5)")
    sim.add_argument("--slo-tpot", type=float, default=0.5, help="TPOT target in seconds (default 0.5)")
    sim.add_argument("-o", "--output", choices=("table", "json"), default="table")
    sim.add_argument("--plots", type=Path,
                     help="write throughput, latency-CDF and per-node charts here, as SVG and PNG (needs matplotlib)")
    sim.add_argument("-q", "--quiet", action="store_true", help="no status line on stderr (none off a terminal)")
    sim.set_defaults(func=_simulate)


def _simulate(args: argparse.Namespace) -> int:
    scheduler_class(args.scheduler)  # fail before planning, which may take a while
    warmup, duration = (QUICK_WARMUP, QUICK_DURATION) if args.quick else (args.warmup, args.duration)
    lengths = load_lengths(args.lengths, args.traces or default_traces_dir()) if args.lengths else \
        default_lengths(args.traces)
    arrivals = None
    if args.mode == "online":
        arrivals = arrival_times(args.arrivals, args.rate, warmup + duration, default_rng(args.seed),
                                 args.traces or default_traces_dir())
    catalog = load_catalog(args.catalog)
    planning = args.layout is None
    with StatusLine(f"{'planning' if planning else 'loading'} {args.cluster}",
                    limit=args.plan_time_limit if planning else None, quiet=args.quiet) as status:
        scenario = load_scenario(args.cluster, args.layout, catalog, model_name=args.model,
                                 throughput_model=args.throughput_model, partial_inference=args.partial_inference,
                                 plan_time_limit=args.plan_time_limit, progress=status)
    config = SimConfig(mode=args.mode, warmup=warmup, duration=duration, seed=args.seed, arrivals=arrivals,
                       kv_high_water=args.kv_high_water, max_in_flight=args.max_in_flight, clients=args.clients,
                       slo_ttft=args.slo_ttft, slo_tpot=args.slo_tpot)
    with StatusLine(f"simulating {scenario.label}", quiet=args.quiet) as status:
        result = Simulation(scenario, args.scheduler, config, lengths).run(progress_bar(status))
    if args.output == "json":
        print(json.dumps(result.to_dict(), allow_nan=False))
    else:
        print(summary_text(result), end="")
    if args.plots:
        for path in write_plots(result, args.plots):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def progress_bar(status: StatusLine, width: int = 30) -> Callable[[float, float], None]:
    """Feeds `status` a bar of simulated time: `[#####-----]  50%  330/660 simulated s`."""
    def show(now: float, end: float) -> None:
        share = min(now / end, 1.0) if end > 0 else 1.0
        filled = int(share * width)
        status(f"[{'#' * filled}{'-' * (width - filled)}] {share * 100:3.0f}%  {now:.0f}/{end:.0f} simulated s")
    return show
