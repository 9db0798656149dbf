"""Simulator benchmark: fidelity against the Helix paper, our plans and scheduler, speed.

    python bench/simulator.py            # the paper's protocol: 60 s warm-up + 600 s measured, 60 s plans
    python bench/simulator.py --quick    # CI: 60 s + 180 s windows, 3 s plans, shorter judging (rougher)

"ours" is the planner's serving objective (`helix plan --objective serving --scheduler
adaptive --slo-ttft S`): max-flow plans under several stage floors (and, for those missing S,
admission caps), each judged with the adaptive scheduler on seeds 100 and 101 (quick: seed 100
and a 120 s window), the best kept among those meeting the TTFT target S; the rows here measure
it with seed 0, and the target checks with seeds 0-4. S is the target itself: the p95 TTFT of
the Helix layout with IWRR, judged the same way. Judging uses the measured window (600 s):
p95 TTFT over 240 s still carries the ramp-up, which the Helix layout's slower ramp inflates
more (hetero42: 6.1 s against 5.2 s over 600 s, mean of seeds 0-4). "maxflow" is
the plain max-flow plan (floor 0) for comparison. The adaptive scheduler exists only in the
simulator; the data plane's front end routes by IWRR (the "ours iwrr" rows).

Exits 1 when a fidelity check (Helix layout within ±15% of the paper, Helix layout ahead of
the Swarm, Petals and separate layouts) fails in a full run; the scheduler ablation and the
targets for our plans are reported (ok / MISSED). Quick windows are too short for geo24's
slow ramp, so --quick only reports.

The scheduler ablation (geo24, Helix layout) differs by a few percent between schedulers while
one seed's figure varies by ±3%, so it is judged over many seeds (20; quick 3), paired: seed s
gives every scheduler the same request lengths, and IWRR counts as ahead of a scheduler when
the mean of the per-seed differences exceeds two standard errors. Our plans are compared with
the Helix layout on means over 5 seeds (quick: seed 0 only), since one seed's p95 TTFT varies
by about ±10%.

Every run is offline (saturated) with Azure-conversation lengths, seed 0, Helix's node-capacity
model for the flows the pipelines follow. Paper protocol: Helix's scheduler (IWRR) admits
requests while KV caches have room; the KV-unaware baselines (Swarm, random, shortest queue)
keep the fixed number of requests in flight that the artifact's scripts use (180 on the
24-node clusters, 500 on hetero42). "separate" is the planner's separate-pipelines heuristic
(the paper hand-built per-GPU-type clusters instead), served by random choice.
Reference data: ../shared/helix-reference (or $HELIX_REFERENCE).
"""

import argparse
import math
import os
import resource
import statistics
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from results import markdown_table, write_table

from helix_planner.models import get_model
from helix_planner.planner import PlannerOptions
from helix_planner.profiles import Catalog, load_catalog
from helix_planner.serving_plan import ServingObjective, judging_runs, plan_for_serving
from helix_planner.sim.inputs import load_scenario, scenario_from_plan
from helix_planner.sim.metrics import SimResult
from helix_planner.sim.simulation import Scenario, SimConfig, Simulation
from helix_planner.sim.workload import LengthTrace, arrival_times, load_lengths

REFERENCE = Path(os.environ.get("HELIX_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "helix-reference"))
TOLERANCE = 0.15
ABLATION = ("swarm", "shortest-queue", "random")  # geo24, Helix layout: schedulers IWRR should beat
CASES = ("single24", "geo24", "hetero42")
TARGET_SEEDS = 5  # our plans against the Helix layout: one seed's p95 TTFT varies by ±10%


@dataclass(frozen=True)
class Row:
    case: str
    layout: str  # published .ini name, a heuristic name, or "ours" (planned now)
    scheduler: str
    published: float | None = None
    in_flight: int | None = None
    rate: float | None = None  # requests/s of Azure-conversation arrivals: an online run


FIDELITY = [
    Row("single24", "helix", "iwrr", 252.1), Row("single24", "swarm", "swarm", 124.7, 180),
    Row("single24", "separate", "random", 124.3, 180),
    Row("geo24", "helix", "iwrr", 98.0), Row("geo24", "swarm", "swarm", 51.9, 180),
    Row("geo24", "petals", "iwrr", 66.6), Row("geo24", "separate", "random", 61.9, 180),
    Row("geo24", "helix", "swarm", 81.7, 180), Row("geo24", "helix", "shortest-queue", 83.6, 180),
    Row("geo24", "helix", "random", 87.4, 180),
    Row("hetero42", "helix", "iwrr", 645.6), Row("hetero42", "swarm", "swarm", 473.2, 500),
    Row("hetero42", "separate", "random", 219.3, 500),
]
# The artifact's online run: arrivals shaped like Azure conversations at 2150 tok/s of prompt and
# output (2.16 requests/s of 995 tokens on average), no warm-up, 1800 s measured.
ONLINE = Row("hetero42", "helix", "iwrr", 459.8, rate=2150 / 995)
OURS = ["helix/adaptive", "maxflow/adaptive", "ours/iwrr", "ours/adaptive"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short windows and plans (CI)")
    parser.add_argument("--ablation-seeds", type=int, help="seeds in the scheduler ablation (default 20, quick 3)")
    parser.add_argument("--plan-time-limit", type=float,
                        help="seconds per planned case, shared among the serving objective's floors "
                             "(default 60, quick 3)")
    args = parser.parse_args()
    window = SimConfig(warmup=60.0, duration=180.0 if args.quick else 600.0)
    plan_limit = args.plan_time_limit or (3.0 if args.quick else 60.0)
    judging = ServingObjective(scheduler="adaptive", seeds=1 if args.quick else 2,
                               window=replace(window, duration=90.0 if args.quick else window.duration, seed=100))
    catalog, lengths = load_catalog(), load_lengths("azure-conv", REFERENCE / "traces")
    scenarios: dict[tuple[str, str], Scenario] = {}
    planned: list[str] = []  # the serving objective's choices, one line per case

    def scenario(case: str, layout: str) -> Scenario:
        if (case, layout) not in scenarios:
            cluster = str(REFERENCE / "clusters" / f"{case}.ini")
            if layout in ("ours", "maxflow"):
                scenarios.update(_planned(case, catalog, lengths, plan_limit, judging, planned))
                return scenarios[(case, layout)]
            path = REFERENCE / "layouts" / f"{case}-llama70b" / f"{layout}.ini"
            source = str(path) if path.exists() else layout
            scenarios[(case, layout)] = load_scenario(cluster, source, catalog, throughput_model="helix",
                                                      partial_inference=layout in ("petals", "swarm"),
                                                      plan_time_limit=plan_limit)
        return scenarios[(case, layout)]

    def run(row: Row, seed: int = 0) -> SimResult:
        config = replace(window, max_in_flight=row.in_flight, seed=seed)
        if row.rate:
            span = 600.0 if args.quick else 1800.0
            arrivals = arrival_times("azure-conv", row.rate, span, np.random.default_rng(0), REFERENCE / "traces")
            config = SimConfig(mode="online", warmup=0.0, duration=span, arrivals=arrivals)
        return Simulation(scenario(row.case, row.layout), row.scheduler, config, lengths).run()

    speed = run(FIDELITY[0])
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    setting = (f"Offline, Azure-conversation lengths, seed 0, window {window.warmup:.0f} s + {window.duration:.0f} s, "
               f"plans {plan_limit:.0f} s. Speed: single24 Helix layout + IWRR, "
               f"{window.warmup + window.duration:.0f} simulated s in {speed.wall_seconds:.1f} s wall "
               f"({speed.sim_seconds_per_wall_second:.0f} simulated s per wall s), "
               f"peak RSS {rss:.0f} MiB (whole process).")
    print(setting + "\n")
    header = (f"{'case':<9} {'layout':<9} {'scheduler':<15} {'admission':>13} {'decode tok/s':>12} {'paper':>7} "
              f"{'vs paper':>8} {'p95 TTFT s':>10} {'p50 TPOT s':>10} {'wall s':>7}")
    print(header + "\n" + "-" * len(header))
    results: dict[tuple[str, str, str], SimResult] = {}
    table: list[tuple[str, ...]] = []
    rows = FIDELITY + [ONLINE] + [Row(c, *name.split("/")) for c in CASES for name in OURS]
    for row in rows:
        result = speed if row == FIDELITY[0] else run(row)
        if row != ONLINE:
            results[(row.case, row.layout, row.scheduler)] = result
        paper = f"{row.published:7.1f} {(result.decode_throughput / row.published - 1) * 100:+7.1f}%" \
            if row.published else f"{'-':>7} {'-':>8}"
        admission = (f"online {row.rate:.2f}/s" if row.rate else
                     f"{row.in_flight} in flight" if row.in_flight else "KV room")
        print(f"{row.case:<9} {row.layout:<9} {row.scheduler:<15} {admission:>13} "
              f"{result.decode_throughput:12.1f} {paper} {result.ttft.p95:10.1f} {result.tpot.p50:10.2f} "
              f"{result.wall_seconds:7.1f}", flush=True)
        table.append((row.case, row.layout, row.scheduler, admission, f"{result.decode_throughput:.1f}",
                      *(paper.split() if row.published else ("-", "-")), f"{result.ttft.p95:.1f}",
                      f"{result.tpot.p50:.2f}", f"{result.wall_seconds:.1f}"))

    def seeded(row: Row, seeds: int) -> list[SimResult]:
        """`row` run with seeds 0 .. seeds-1 (seed 0 is the table's run)."""
        return [results[(row.case, row.layout, row.scheduler)]] + [run(row, seed) for seed in range(1, seeds)]

    ablation_seeds = args.ablation_seeds or (3 if args.quick else 20)
    ablation = {row.scheduler: [r.decode_throughput for r in seeded(row, ablation_seeds)]
                for row in FIDELITY if row.case == "geo24" and row.layout == "helix"}
    target_seeds = 1 if args.quick else TARGET_SEEDS
    targets = {(case, name): seeded(Row(case, *name.split("/")), target_seeds) for case in CASES
               for name in ("helix/iwrr", *OURS)}
    report = [setting, markdown_table(("case", "layout", "scheduler", "admission", "decode tok/s", "paper", "vs paper",
                                       "p95 TTFT s", "p50 TPOT s", "wall s"), table), *planned]
    failed = _verdicts(results, ablation, targets, report, enforce=not args.quick)
    write_table("simulator", "\n\n".join(report))
    return failed


def _standard_error(values: list[float]) -> float:
    return statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.inf


def _means(runs: list[SimResult]) -> tuple[float, float]:
    """Mean decode throughput and mean p95 TTFT over `runs`."""
    return statistics.mean(r.decode_throughput for r in runs), statistics.mean(r.ttft.p95 for r in runs)


def _planned(case: str, catalog: Catalog, lengths: LengthTrace, time_limit: float,
             objective: ServingObjective, notes: list[str]) -> dict[tuple[str, str], Scenario]:
    """The serving objective's plan ("ours") at no more p95 TTFT than the Helix layout's, and its
    floor-0 candidate, the max-flow plan ("maxflow"); what it chose goes to `notes`."""
    helix = load_scenario(str(REFERENCE / "clusters" / f"{case}.ini"),
                          str(REFERENCE / "layouts" / f"{case}-llama70b" / "helix.ini"), catalog,
                          throughput_model="helix")
    cluster, model = helix.cluster, get_model("llama2-70b")
    options = PlannerOptions(time_limit=time_limit, throughput_model="helix")
    slo = statistics.mean(r.ttft.p95 for r in judging_runs(helix, replace(objective, scheduler="iwrr"), lengths))
    plan, candidates = plan_for_serving(cluster, model, options, lengths, replace(objective, ttft_slo=slo),
                                        catalog=catalog)
    chosen = next(c for c in candidates if c.plan.layout == plan.layout and c.plan.max_in_flight == plan.max_in_flight)
    notes.append(f"{case}: serving objective, TTFT target {slo:.1f} s (Helix layout + IWRR, judged alike), "
                 f"{len(candidates)} candidates, saturated: " + ", ".join(
                     f"floor {c.floor:g} {c.decode_throughput:.0f} tok/s p95 TTFT {c.ttft_p95:.1f} s"
                     for c in candidates if c.plan.max_in_flight is None) + f"; chose {plan.solver.method}: "
                 f"{chosen.decode_throughput:.0f} tok/s p95 TTFT {chosen.ttft_p95:.1f} s.")
    print(notes[-1], flush=True)
    return {(case, "ours"): scenario_from_plan(plan, cluster, model, catalog, f"{case}: ours"),
            (case, "maxflow"): scenario_from_plan(candidates[0].plan, cluster, model, catalog, f"{case}: max flow")}


def _verdicts(results: dict[tuple[str, str, str], SimResult], ablation: dict[str, list[float]],
              targets: dict[tuple[str, str], list[SimResult]], report: list[str], *, enforce: bool) -> int:
    """Print the checks and add them to `report`; the fidelity and layout-ordering ones fail the run when `enforce`."""
    def decode(case: str, layout: str, scheduler: str) -> float:
        return results[(case, layout, scheduler)].decode_throughput

    checks: list[tuple[bool, bool, str]] = []  # (hard, passed, description)
    for row in FIDELITY:
        if row.layout == "helix" and row.scheduler == "iwrr":
            got = decode(row.case, "helix", "iwrr")
            checks.append((True, abs(got / row.published - 1) <= TOLERANCE,
                           f"{row.case}: Helix layout + IWRR {got:.1f} tok/s within ±15% of the paper's "
                           f"{row.published}"))
    for row in FIDELITY:
        if row.layout != "helix":
            helix, other = decode(row.case, "helix", "iwrr"), decode(row.case, row.layout, row.scheduler)
            checks.append((True, helix > other, f"{row.case}: Helix layout {helix:.1f} > {row.layout} layout "
                                                f"({row.scheduler}) {other:.1f}"))
    seeds = len(ablation["iwrr"])
    print(f"\nscheduler ablation, geo24 Helix layout, seeds 0-{seeds - 1} (mean ± standard error, tok/s):")
    for scheduler, values in ablation.items():
        print(f"  {scheduler:<15} {statistics.mean(values):6.1f} ± {_standard_error(values):.2f}")
    report.append(f"Scheduler ablation, geo24 Helix layout, seeds 0-{seeds - 1}:\n\n" + markdown_table(
        ("scheduler", "decode tok/s, mean ± standard error"),
        [(name, f"{statistics.mean(v):.1f} ± {_standard_error(v):.2f}") for name, v in ablation.items()]))
    for scheduler in ABLATION:
        gaps = [a - b for a, b in zip(ablation["iwrr"], ablation[scheduler])]
        gap, error = statistics.mean(gaps), _standard_error(gaps)
        ahead = sum(g > 0 for g in gaps)
        checks.append((False, gap > 2 * error, f"geo24 Helix layout: IWRR - {scheduler} = {gap:+.1f} ± {error:.1f} "
                                               f"tok/s over {seeds} seeds (IWRR ahead on {ahead})"))
    seeds = len(targets[("geo24", "helix/iwrr")])
    print(f"\nours vs Helix layout + IWRR, means over seeds 0-{seeds - 1} "
          "(decode throughput ratio / p95 TTFT ratio):")
    versus: list[tuple[str, ...]] = []
    for case in CASES:
        base_decode, base_ttft = _means(targets[(case, "helix/iwrr")])
        ratios = {name: (decode / base_decode, ttft / base_ttft)
                  for name in OURS for decode, ttft in [_means(targets[(case, name)])]}
        print(f"  {case:<9} " + "   ".join(f"{name} {d:.2f}x / {t:.2f}x" for name, (d, t) in ratios.items()))
        versus.append((case, *(f"{d:.2f}x / {t:.2f}x" for d, t in ratios.values())))
        if case != "single24":
            d, t = ratios["ours/adaptive"]
            checks.append((False, d >= 1.10 and t <= 1.0, f"{case}: our plan + adaptive {d:.2f}x Helix's decode "
                                                           f"throughput (target >= 1.10x) at {t:.2f}x its p95 TTFT "
                                                           f"over {seeds} seed(s)"))
    report.append(f"Against the Helix layout with IWRR, means over seeds 0-{seeds - 1} (decode throughput ratio / "
                  "p95 TTFT ratio):\n\n" + markdown_table(("case", *OURS), versus))
    verdicts = [f"{'ok' if passed else ('FAILED' if hard else 'MISSED')} {text}" for hard, passed, text in checks]
    print("\n" + "\n".join(verdicts))
    report.append("Checks:\n\n" + "\n".join(f"* {line}" for line in verdicts))
    return 1 if enforce and any(hard and not passed for hard, passed, _ in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
