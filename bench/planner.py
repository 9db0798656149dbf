"""Planner benchmark: the paper's clusters, fleets of 500-2,000 GPUs, a replan and the serving objective.

    python bench/planner.py            # 60 s per reference case; fleets of 500, 1,000, 2,000 GPUs
    python bench/planner.py --quick    # CI: 8 s per reference case; fleets of 500 and 1,000 GPUs

One table, Helix's node-capacity model (`--throughput-model helix`), LLaMA-2-70B (small10:
LLaMA-1-30B). Columns: planning seconds, the plan's max flow (tok/s, the exact evaluator's),
the certified upper bound, the gap (bound - plan) / bound, the peak RSS of this process so far
(ru_maxrss), the target and whether it is met. The table also goes to docs/results/planner.md
(planner-quick.md with --quick, see bench/results.py). The exit status is 1 only when a
published layout does not evaluate to the paper's figure or a plan falls below Helix's;
targets not met show as NO. Rows:

* reference cases (../shared/helix-reference): single24, geo24 and small10 must be proven
  optimal; hetero42 must reach 5,813.7 tok/s with a gap <= 2% in 60 s. The published Helix
  layouts must evaluate to the paper's objectives (else the run fails).
* fleets from `helix_planner.synthetic.FLEETS` (seeded): 1,000 GPUs in 8 regions in <= 60 s
  with a gap <= 5%; 2,000 in 10 regions in <= 300 s with a gap <= 10%; 500 in 6 as a step.
  Full mode also plans the old 200-node generator's cluster (4 regions, 100 Mbit/s links).
* replan: the 1,000-GPU fleet (500 in --quick) loses the node carrying the most flow; the
  planner replans from the running plan with a churn weight of 10 tok/s per moved layer
  (<= 10 s); the note gives the layers moved.
* serving objective on the same fleet (floors 0, 0.5, 0.85; a fleet's candidates are judged
  by the analytical model of `helix_planner.serving_model`): the chosen plan and the max-flow
  plan (floor 0) are then simulated, saturated (the front end starts with a quarter of the
  requests the model expects KV room to hold), fixed 750/240-token requests; the note gives
  their simulated decode tok/s and p95 TTFT beside the model's figures.
"""

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from results import markdown_table, write_table  # bench/ is the script's directory

from helix_planner.cluster import Cluster
from helix_planner.fleet import layers_moved
from helix_planner.flow import evaluate
from helix_planner.io.helix_ini import load_cluster_ini, load_layout_ini
from helix_planner.models import get_model
from helix_planner.plan_format import Plan
from helix_planner.planner import PlannerOptions, plan_cluster
from helix_planner.profiles import Catalog, load_catalog
from helix_planner.serving_plan import ServingObjective, judging_runs, plan_for_serving
from helix_planner.sim.inputs import scenario_from_plan
from helix_planner.sim.simulation import SimConfig
from helix_planner.sim.workload import load_lengths
from helix_planner.synthetic import FLEETS, fleet_cluster, synthetic_cluster
from helix_planner.throughput.helix import HelixCapacityModel

REFERENCE = Path(os.environ.get("HELIX_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "helix-reference"))
CASES = [  # cluster, layout directory, model, published Helix objective (tok/s)
    ("single24", "single24-llama70b", "llama2-70b", 1289.6),
    ("geo24", "geo24-llama70b", "llama2-70b", 1212.2),
    ("hetero42", "hetero42-llama70b", "llama2-70b", 4137.5),
    ("small10", "small10-llama30b", "llama1-30b", 286.59),
]
HETERO42_BEST = 5813.7  # the planner's earlier hetero42 result, to keep
FLEET_TARGETS = {500: (60.0, 0.05), 1000: (60.0, 0.05), 2000: (300.0, 0.10)}  # seconds, gap
CHURN_WEIGHT = 10.0
SERVING_FLOORS = (0.0, 0.5, 0.85)
COLUMNS = ("cluster", "GPUs", "regions", "plan s", "tok/s", "bound", "gap %", "peak RSS MB", "target", "met?", "note")
WIDTHS = (-28, 5, 7, 7, 10, 10, 7, 11, -28, -4, 0)  # negative: left-aligned


@dataclass(frozen=True)
class Row:
    cluster: str
    gpus: int
    regions: int
    seconds: float
    plan: Plan
    target: str
    met: bool
    note: str = ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short limits and smaller fleets (CI)")
    parser.add_argument("--time-limit", type=float, help="seconds per reference case")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    limit = args.time_limit or (8.0 if args.quick else 60.0)
    catalog = load_catalog()
    options = PlannerOptions(time_limit=limit, threads=args.threads, throughput_model="helix")
    print(f"planner benchmark: throughput model helix, {args.threads} threads, {limit:.0f} s per reference case"
          + (" (--quick)" if args.quick else ""))
    header = line(COLUMNS)
    print(header)
    print("-" * len(header))
    failures: list[str] = []
    table: list[tuple[str, ...]] = []

    def show(row: Row) -> None:
        table.append(cells(row))
        print(line(table[-1]), flush=True)

    for case in CASES:
        show(reference_row(case, options, catalog, failures))
    if not args.quick:
        show(fleet_row("synthetic 200n (old generator)", synthetic_cluster(200, 4, seed=0), options, catalog, None))
    sizes = (500, 1000) if args.quick else (500, 1000, 2000)
    plans = {}
    for size in sizes:
        spec = FLEETS[size]
        cluster = fleet_cluster(spec)
        row = fleet_row(f"fleet {size} GPUs", cluster, options, catalog, FLEET_TARGETS[size])
        plans[size] = (cluster, row.plan)
        show(row)
    size = 500 if args.quick else 1000
    cluster, plan = plans[size]
    show(replan_row(f"replan fleet {size}, -1 node", cluster, plan, options, catalog))
    window = (SimConfig(warmup=10.0, duration=20.0, seed=1) if args.quick
              else SimConfig(warmup=20.0, duration=40.0, seed=1))
    show(serving_row(f"serving fleet {size}", cluster, options, catalog, window))
    load = os.getloadavg()
    write_table("planner", f"{args.threads} threads, {limit:.0f} s per reference case; load average "
                f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min) at the end.\n\n"
                + markdown_table(COLUMNS, table))
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def cells(row: Row) -> tuple[str, ...]:
    """The row's cells; peak RSS is this process's so far (ru_maxrss), taken as the row ends."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return (row.cluster, str(row.gpus), str(row.regions), f"{row.seconds:.1f}", f"{row.plan.throughput:.1f}",
            f"{row.plan.upper_bound or 0.0:.1f}", f"{(row.plan.gap or 0.0) * 100:.3f}", f"{rss:.0f}", row.target,
            "yes" if row.met else "NO", row.note)


def line(values: tuple[str, ...]) -> str:
    return " ".join(f"{v:<{-w}}" if w < 0 else f"{v:>{w}}" for v, w in zip(values, WIDTHS))


def timed(run: Callable[[], Plan]) -> tuple[Plan, float]:
    started = time.monotonic()
    plan = run()
    return plan, time.monotonic() - started


def reference_row(case: tuple[str, str, str, float], options: PlannerOptions, catalog: Catalog,
                  failures: list[str]) -> Row:
    name, layout_dir, model_name, published = case
    cluster = load_cluster_ini(REFERENCE / "clusters" / f"{name}.ini")
    model = get_model(model_name)
    capacity = HelixCapacityModel(catalog, model.name, model.num_layers, cluster.gpu_counts())
    reproduced = evaluate(cluster, model, capacity,
                          load_layout_ini(REFERENCE / "layouts" / layout_dir / "helix.ini", cluster)).value
    if abs(reproduced / published - 1) > 0.005:
        failures.append(f"{name}: evaluator gives {reproduced:.1f} for Helix's layout, paper {published}")
    plan, seconds = timed(lambda: plan_cluster(cluster, model, options, catalog=catalog))
    if plan.throughput < min(published, reproduced) * (1 - 1e-6):  # the paper rounds its figures
        failures.append(f"{name}: ours {plan.throughput:.2f} below Helix's {published}")
    gap = plan.gap or 0.0
    if name == "hetero42":
        target = f">= {HETERO42_BEST:,.1f}, gap <= 2%, <= 60 s"
        met = plan.throughput >= HETERO42_BEST - 0.05 and gap <= 0.02 and seconds <= 60
    else:
        target, met = "proven optimal", plan.solver.status == "optimal"
    return Row(name, len(cluster.nodes), len(cluster.regions()), seconds, plan, target, met,
               f"Helix published {published:,.1f} (x{plan.throughput / published:.2f}), {plan.solver.method}")


def fleet_row(label: str, cluster: Cluster, options: PlannerOptions, catalog: Catalog,
              target: tuple[float, float] | None) -> Row:
    model = get_model("llama2-70b")
    seconds_limit = target[0] if target else options.time_limit
    plan, seconds = timed(lambda: plan_cluster(cluster, model, replace(options, time_limit=seconds_limit),
                                               catalog=catalog))
    gap = plan.gap or 0.0
    note = f"{plan.solver.method}, {len(plan.nodes)} nodes used, {len(cluster.gpu_counts())} GPU types"
    if target is None:
        return Row(label, len(cluster.nodes), len(cluster.regions()), seconds, plan, "- (was 20.5% gap in 286 s)",
                   True, note)
    return Row(label, len(cluster.nodes), len(cluster.regions()), seconds, plan,
               f"<= {target[0]:.0f} s, gap <= {target[1] * 100:.0f}%", seconds <= target[0] and gap <= target[1], note)


def replan_row(label: str, cluster: Cluster, running: Plan, options: PlannerOptions, catalog: Catalog) -> Row:
    lost = max(running.nodes, key=lambda n: (n.flow, n.name))
    smaller = cluster.without({lost.name})
    model = get_model("llama2-70b")
    lines: list[str] = []
    plan, seconds = timed(lambda: plan_cluster(smaller, model, replace(options, churn_weight=CHURN_WEIGHT),
                                               previous=running, catalog=catalog, progress=lines.append))
    moved = layers_moved(running.layout, plan.layout)
    # the planner's candidate lines: "fleet      NAME  VALUE tok/s  MOVED layers moved"
    candidates = [line.split() for line in lines if line.startswith("fleet ")
                  and line.split()[1] in ("repair-forward", "repair-backward", "replace")]
    others = ", ".join(f"{c[1]} {float(c[2]):,.0f} tok/s with {c[4]} moved" for c in candidates)
    note = (f"lost {lost.name} ({lost.gpu_type}, {lost.flow:.0f} tok/s); chose {plan.solver.method} "
            f"(churn weight {CHURN_WEIGHT:g} tok/s per layer): {moved} layers moved of "
            f"{sum(e - s for s, e in running.layout.values())} placed; {others}")
    return Row(label, len(smaller.nodes), len(smaller.regions()), seconds, plan, "<= 10 s, layers moved in note",
               seconds <= 10, note)


def serving_row(label: str, cluster: Cluster, options: PlannerOptions, catalog: Catalog, window: SimConfig) -> Row:
    """Plan for serving (a fleet's candidates judged by the analytical model), then simulate the
    chosen and the max-flow plan saturated: the front end starts with a quarter of the requests
    the model expects KV room to hold (the rest ramp in), so the window sees a full fleet."""
    model = get_model("llama2-70b")
    lengths = load_lengths("fixed:750,240", REFERENCE)
    objective = ServingObjective(floors=SERVING_FLOORS, window=window)
    started = time.monotonic()
    chosen, candidates = plan_for_serving(cluster, model, replace(options, time_limit=60.0), lengths, objective,
                                          catalog=catalog)
    seconds = time.monotonic() - started
    picked = next(c for c in candidates if c.plan.layout == chosen.layout)
    pairs = [(picked, chosen), (candidates[0], candidates[0].plan)]
    simulated = time.monotonic()
    results = [judging_runs(scenario_from_plan(plan, cluster, model, catalog, label),
                            replace(objective, window=replace(window, seed=0,
                                                              offline_initial=max(20, round(c.in_flight / 4)))),
                            lengths)[0]
               for c, plan in pairs]
    simulated = time.monotonic() - simulated
    note = (f"simulated decode {results[0].decode_throughput:.0f} vs {results[1].decode_throughput:.0f} tok/s, "
            f"p95 TTFT {results[0].ttft.p95:.1f} vs {results[1].ttft.p95:.1f} s (chosen {chosen.solver.method} vs "
            f"max flow; judged by {picked.judged_by}: decode {picked.decode_throughput:.0f} vs "
            f"{candidates[0].decode_throughput:.0f}, TTFT {picked.ttft_p95:.1f} vs {candidates[0].ttft_p95:.1f} s; "
            f"{results[0].in_flight_at_end} vs {results[1].in_flight_at_end} in flight at the end; "
            f"sim {window.warmup:.0f}+{window.duration:.0f} s, {simulated:.0f} s wall for both)")
    return Row(label, len(cluster.nodes), len(cluster.regions()), seconds, chosen, "<= 60 s incl. judging",
               seconds <= 60, note)


if __name__ == "__main__":
    sys.exit(main())
