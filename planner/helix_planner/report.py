"""Plain-text report of a plan for `helix plan -o table`."""

from helix_planner.plan_format import Plan


def plan_table(plan: Plan, *, max_pipelines: int = 10) -> str:
    gap = "n/a" if plan.gap is None else f"{plan.gap * 100:.3f}%"
    lines = [
        f"model {plan.model['name']} ({plan.model['numLayers']} layers) on {plan.cluster}, "
        f"throughput model {plan.throughput_model}",
        f"throughput {plan.throughput:.1f} tok/s   upper bound {plan.upper_bound or 0:.1f}   gap {gap}   "
        f"status {plan.solver.status}   method {plan.solver.method}   {plan.solver.seconds:.1f}s   plan {plan.plan_hash}",
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
