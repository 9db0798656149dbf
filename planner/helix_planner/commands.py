"""The planner's subcommands: `helix plan`, `helix evaluate`, `helix catalog`."""

import argparse
import sys
from pathlib import Path

from helix_planner.catalog_import import import_reference
from helix_planner.cluster import Cluster
from helix_planner.errors import PlanningError
from helix_planner.flow import evaluate
from helix_planner.io.cluster_files import DEFAULT_CLUSTER, load_cluster
from helix_planner.io.helix_ini import dump_layout_ini, load_layout_ini
from helix_planner.models import ModelSpec, get_model
from helix_planner.plan_format import load_plan
from helix_planner.planner import METHODS, PlannerOptions, capacity_model_for, plan_cluster
from helix_planner.profiles import Catalog, load_catalog
from helix_planner.render import draw_placement
from helix_planner.report import max_flow_note, plan_table, serving_lines
from helix_planner.serving_plan import DEFAULT_LENGTHS, Candidate, ServingObjective, choose, judge, plan_for_serving
from helix_planner.sim.cli import add_simulate_command
from helix_planner.sim.workload import LENGTH_TRACES, default_traces_dir, load_lengths
from helix_planner.status import StatusLine


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    plan = subparsers.add_parser("plan", help="place layers on a cluster for maximum throughput")
    plan.add_argument("cluster", nargs="?", default=DEFAULT_CLUSTER,
                      help=f"cluster file (.yaml or Helix .ini) or bundled example (default {DEFAULT_CLUSTER})")
    _model_options(plan)
    plan.add_argument("--time-limit", type=float, default=60.0, help="seconds for the whole plan (default 60)")
    plan.add_argument("--mip-gap", type=float, default=1e-4, help="stop when the certified gap is below this")
    plan.add_argument("--threads", type=int, default=2, help="HiGHS threads (default 2)")
    plan.add_argument("--method", choices=METHODS, default="auto", help="auto (heuristics + MILP) or one baseline")
    plan.add_argument("--previous", type=Path, help="running plan (JSON): warm start and churn penalty")
    plan.add_argument("--churn-weight", type=float, default=0.0, help="tok/s given up per moved layer")
    plan.add_argument("--min-layer-fraction", type=float, default=0.0,
                      help="each used node holds at least this share of the layers it could (0 to 1, default 0)")
    plan.add_argument("--objective", choices=("max-flow", "serving"), default="max-flow",
                      help="max-flow (Helix's), or serving: max-flow plans under several stage floors, the one "
                           "with the best simulated decode throughput kept (the time limit is shared among them)")
    plan.add_argument("--lengths", default=DEFAULT_LENGTHS,
                      help=f"request lengths the serving estimate (and objective) simulate "
                           f"({', '.join(LENGTH_TRACES)}, a CSV path, or "
                           f"fixed:IN,OUT; default {DEFAULT_LENGTHS}, Helix's average request)")
    plan.add_argument("--traces", type=Path, help="serving: folder of the reference traces")
    plan.add_argument("--scheduler", default="iwrr",
                      help="serving: scheduler the candidates are simulated with (default iwrr, the front end's)")
    plan.add_argument("--slo-ttft", type=float,
                      help="serving: p95 time to first token (s) the chosen plan must meet in simulation, if any "
                           "can; a placement that misses it is also tried with fewer requests admitted at once, and "
                           "the plan carries that cap (maxInFlight)")
    plan.add_argument("--judge-seeds", type=int, default=1,
                      help="serving: simulations per candidate, averaged (default 1; more steady a TTFT target)")
    plan.add_argument("-o", "--output", choices=("json", "table", "helix-ini"), default="json",
                      help="the plan document (json, default), a readable table, or Helix's [Solution] .ini")
    plan.add_argument("--svg", type=Path,
                      help="also draw the placement: PATH as SVG and a PNG beside it (needs matplotlib)")
    plan.add_argument("--no-simulate", dest="simulate", action="store_false",
                      help="skip the serving estimate (a short simulation of the plan, printed after it)")
    plan.add_argument("-q", "--quiet", action="store_true", help="no status line on stderr (none off a terminal)")
    plan.set_defaults(func=_plan)

    check = subparsers.add_parser("evaluate", help="max flow and bottleneck of a given placement")
    check.add_argument("cluster")
    check.add_argument("layout", type=Path, help="a Helix [Solution] .ini layout or a plan JSON")
    _model_options(check)
    check.add_argument("--partial-inference", action="store_true", help="let a stage start inside a node's range")
    check.set_defaults(func=_evaluate)

    catalog = subparsers.add_parser("catalog", help="GPU profile catalog")
    actions = catalog.add_subparsers(dest="catalog_command", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="GPU types and measurements known")
    listing.add_argument("--catalog", type=Path, action="append", default=[])
    listing.set_defaults(func=_catalog_list)
    imported = actions.add_parser("import", help="convert the Helix artifact's profiles to catalog files")
    imported.add_argument("reference", type=Path, help="the helix-reference directory")
    imported.add_argument("-o", "--out", type=Path, required=True)
    imported.set_defaults(func=_catalog_import)
    add_simulate_command(subparsers)


def _model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="model name (default: the cluster file's, else llama2-70b)")
    parser.add_argument("--throughput-model", choices=("profiled", "helix"), default="profiled",
                        help="node capacity model: the project's own (profiled) or Helix's T_i(k)")
    parser.add_argument("--catalog", type=Path, action="append", default=[], help="extra GPU catalog dir or file")


def _inputs(args: argparse.Namespace) -> tuple[Cluster, ModelSpec, Catalog]:
    cluster, model = load_cluster(args.cluster)
    if args.model:
        model = get_model(args.model)
    return cluster, model or get_model("llama2-70b"), load_catalog(args.catalog)


def _plan(args: argparse.Namespace) -> int:
    cluster, model, catalog = _inputs(args)
    previous = load_plan(args.previous.read_text()) if args.previous else None
    options = PlannerOptions(time_limit=args.time_limit, mip_gap=args.mip_gap, threads=args.threads,
                             throughput_model=args.throughput_model, method=args.method, churn_weight=args.churn_weight,
                             min_layer_fraction=args.min_layer_fraction)
    lengths = load_lengths(args.lengths, args.traces or default_traces_dir())
    if args.judge_seeds < 1:
        raise PlanningError(f"--judge-seeds {args.judge_seeds}: give at least 1")
    objective = ServingObjective(scheduler=args.scheduler, ttft_slo=args.slo_ttft, seeds=args.judge_seeds)
    judged: Candidate | None = None
    with StatusLine(f"planning {cluster.name}", limit=args.time_limit, quiet=args.quiet) as status:
        if args.objective == "serving":
            plan, candidates = plan_for_serving(cluster, model, options, lengths, objective, previous=previous,
                                                catalog=catalog, progress=status.keep)
            judged = choose(candidates, objective.ttft_slo)
        else:
            plan = plan_cluster(cluster, model, options, previous=previous, catalog=catalog, progress=status)
    if args.simulate and judged is None:
        with StatusLine(f"simulating the plan on {cluster.name}", quiet=args.quiet) as status:
            status(f"{objective.window.warmup + objective.window.duration:g} simulated s, saturated")
            judged = judge(plan, 0.0, objective, cluster, model, catalog, lengths)
    serving = [] if judged is None else serving_lines(plan, judged, objective, lengths.name,
                                                      objective_name=args.objective)
    if args.output == "table":
        print(plan_table(plan) + "".join(f"\n{line}" for line in serving), end="\n" if serving else "")
    else:  # JSON and .ini must stay parseable: the notes go to stderr
        print(plan.to_json() if args.output == "json" else dump_layout_ini(plan.layout, cluster).rstrip("\n"))
        print("\n".join([max_flow_note(plan), *serving]), file=sys.stderr)
    if args.svg:
        for path in draw_placement(plan, args.svg):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    cluster, model, catalog = _inputs(args)
    capacity_model = capacity_model_for(cluster, model, PlannerOptions(throughput_model=args.throughput_model), catalog)
    if args.layout.suffix == ".json":
        layout = load_plan(args.layout.read_text()).layout
    else:
        layout = load_layout_ini(args.layout, cluster)
    result = evaluate(cluster, model, capacity_model, layout, partial_inference=args.partial_inference)
    print(f"max flow {result.value:.2f} tok/s over {len(layout)} nodes")
    for item in result.bottlenecks:
        print(f"  bottleneck: {item}")
    return 0


def _catalog_list(args: argparse.Namespace) -> int:
    catalog = load_catalog(args.catalog)
    print(f"{'gpu':<12} {'vram GB':>8} {'mem BW GB/s':>12} {'TFLOP/s':>8}  measured models")
    for name, gpu in sorted(catalog.gpus.items()):
        measured = ", ".join(sorted(m for m, g in catalog.measured if g == name)) or "-"
        print(f"{name:<12} {gpu.vram_bytes / 1e9:>8.0f} {gpu.memory_bandwidth / 1e9:>12.0f} "
              f"{gpu.peak_flops / 1e12:>8.0f}  {measured}")
    return 0


def _catalog_import(args: argparse.Namespace) -> int:
    if not (args.reference / "gpu_constants.json").exists():
        raise PlanningError(f"{args.reference} is not the Helix reference directory (no gpu_constants.json)")
    args.out.mkdir(parents=True, exist_ok=True)
    for path in import_reference(args.reference, args.out):
        print(f"wrote {path}")
    return 0
