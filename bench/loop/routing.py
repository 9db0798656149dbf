"""Routing on the emulated fleet: the front end's adaptive routing against IWRR, served.

    sudo python bench/closed_loop.py --part routing

Two plans, the planner's max-flow plan (Helix-style: max flow, IWRR over its pipelines) and the
project's chosen plan (the serving objective's), each served with HELIX_ROUTING=iwrr and
=adaptive on the same fleet, network and load as the placements part, but with half its measured
requests (four served runs fit a few minutes). Decode tok/s and p95 TTFT are measured served;
the simulated column is the simulator's IWRR prediction for the plan, for reference. The ratio
column compares each run's decode tok/s with max flow + IWRR's, the issue's baseline.
"""

from dataclasses import replace

from closed_loop import Row, Setup, describe, make_plan, say, serve, simulate
from results import markdown_table

from helix_worker.fleet.emulated import Portals
from helix_worker.fleet.netem import EmulatedNetwork

PLANS = ("max-flow", "serving")
ROUTINGS = ("iwrr", "adaptive")


def run(setup: Setup, net: EmulatedNetwork, portals: Portals) -> str:
    mode = replace(setup.mode, load=replace(setup.mode.load, requests=max(4, setup.mode.load.requests // 2)))
    rows: list[tuple[str, Row]] = []
    for placement in PLANS:
        plan = make_plan(placement, setup.cluster, setup.spec, setup.catalog, setup.lengths, mode.plan_seconds)
        simulated = simulate(plan, setup.cluster, setup.spec, setup.catalog, setup.lengths, mode.load.concurrency)
        say(f"{placement}: plan {plan.plan_hash[:8]}, {describe(plan, setup.cluster)}")
        for routing in ROUTINGS:
            same = next((r for routed, r in rows if routed == routing and r.plan == plan.plan_hash), None)
            if same is not None:  # the chosen plan may be the max-flow plan: one measurement
                rows.append((routing, replace(same, placement=placement, shape=f"as {same.placement}")))
                continue
            row = serve(placement, plan, setup.cluster, net, portals, setup.checkpoint, setup.worker_env(plan),
                        setup.workdir / f"routing-{placement}-{routing}", mode, simulated, routing)
            say(f"{placement} + {routing}: {row.served_tps:.1f} tok/s, p95 TTFT {row.served_ttft:.2f} s, "
                f"{row.finished} requests ({row.errors} errors)")
            rows.append((routing, row))
    return report(rows, mode.load.requests, mode.load.concurrency)


def report(rows: list[tuple[str, Row]], requests: int, concurrency: int) -> str:
    baseline = next(r.served_tps for routing, r in rows if routing == "iwrr" and r.placement == "max-flow")
    header = ("plan", "hash", "pipelines (stage regions)", "routing", "served decode tok/s", "vs max-flow + IWRR",
              "served p95 TTFT s", "simulated tok/s (IWRR)", "requests (errors)")
    table = markdown_table(header, [
        (r.placement, r.plan[:8], r.shape, routing, f"{r.served_tps:.1f}",
         f"{r.served_tps / baseline:.2f}x" if baseline > 0 else "n/a", f"{r.served_ttft:.2f}",
         f"{r.simulated_tps:.1f}", f"{r.finished} ({r.errors})") for routing, r in rows])
    return (f"{concurrency} closed-loop streams, {requests} measured requests per run; max-flow is the planner's "
            f"max-flow plan, serving the serving objective's (the project's chosen plan).\n\n{table}\n")
