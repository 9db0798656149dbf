"""Plain-text report of a plan for `helix plan -o table` and `helix up`, and what serving it would give.

Max flow and served decode tokens/s differ by an order of magnitude or more on real clusters,
and a newcomer who sees only the first expects it from the second: every report says which is which.
"""

from helix_planner.plan_format import Plan
from helix_planner.serving_plan import Candidate, ServingObjective


def plan_table(plan: Plan, *, max_pipelines: int = 10) -> str:
    gap = "n/a" if plan.gap is None else f"{plan.gap * 100:.3f}%"
    lines = [
        f"model {plan.model['name']} ({plan.model['numLayers']} layers) on {plan.cluster}, "
        f"throughput model {plan.throughput_model}",
        f"throughput {plan.throughput:.1f} tok/s   upper bound {plan.upper_bound or 0:.1f}   gap {gap}   "
        f"status {plan.solver.status}   method {plan.solver.method}   {plan.solver.seconds:.1f}s   "
        f"plan {plan.plan_hash}",
        max_flow_note(plan),
        "",
        f"{'node':<24} {'gpu':<10} {'region':<12} {'layers':>10} {'capacity':>10} {'flow':>10} {'util':>6}",
    ]
    for n in sorted(plan.nodes, key=lambda n: (n.start, n.region, n.name)):
        util = n.flow / n.capacity * 100 if n.capacity > 0 else 0.0
        lines.append(f"{n.name:<24} {n.gpu_type:<10} {n.region:<12} {f'[{n.start},{n.end})':>10} "
                     f"{n.capacity:>10.1f} {n.flow:>10.1f} {util:>5.0f}%")
    lines += ["", f"pipelines ({len(plan.pipelines)}):"]
    for p in sorted(plan.pipelines, key=lambda p: -p.tokens_per_second)[:max_pipelines]:
        stages = " -> ".join(f"{s.node}[{s.start},{s.end})" for s in p.stages)
        lines.append(f"  {p.tokens_per_second:10.1f} tok/s  {stages}")
    if len(plan.pipelines) > max_pipelines:
        lines.append(f"  ... {len(plan.pipelines) - max_pipelines} more")
    if plan.bottlenecks:
        lines += ["", "bottleneck (saturated min cut): " + "; ".join(plan.bottlenecks[:8])]
    return "\n".join(lines) + "\n"


def max_flow_note(plan: Plan) -> str:
    """What the plan's throughput figure is, and is not."""
    return ("(throughput = max flow: prompt + decode tokens/s with every node busy, the planner's objective and "
            "an upper bound; served decode tokens/s is often a small fraction of it, which `helix plan` simulates)")


def serving_lines(plan: Plan, judged: Candidate, objective: ServingObjective, lengths: str, *,
                  objective_name: str) -> list[str]:
    """What serving the plan would give in simulation, beside its max flow, and how that was measured."""
    window = objective.window
    lines = [f"what serving would give (simulated saturated: request lengths {lengths}, scheduler "
             f"{objective.scheduler}, {window.duration:g} s after {window.warmup:g} s warm-up, {_seeds(objective)}):",
             f"  decode {judged.decode_throughput:.1f} tok/s (max flow {plan.throughput:.1f} counts prompt + decode "
             f"with every node busy)   p95 time to first token {judged.ttft_p95:.1f} s"]
    if objective_name == "max-flow":
        lines.append("  the placement with the best simulated decode throughput: helix plan --objective serving")
    return lines


def _seeds(objective: ServingObjective) -> str:
    first = objective.window.seed
    return f"seed {first}" if objective.seeds == 1 else f"mean of seeds {first}-{first + objective.seeds - 1}"
