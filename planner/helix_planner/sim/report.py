"""Plain-text summary of a run for `helix simulate` (JSON comes from `SimResult.to_dict`)."""

from helix_planner.sim.metrics import Percentiles, SimResult


def _seconds(p: Percentiles) -> str:
    return f"p50 {p.p50:8.3f} s   p95 {p.p95:8.3f} s   p99 {p.p99:8.3f} s"


def summary_text(result: SimResult) -> str:
    r = result
    lines = [
        f"{r.label}   scheduler {r.scheduler}   {r.mode}   seed {r.seed}   "
        f"window {r.warmup:.0f}-{r.warmup + r.duration:.0f} s   request lengths {r.lengths}",
        f"decode throughput {r.decode_throughput:10.1f} tok/s   prompt throughput {r.prompt_throughput:10.1f} tok/s",
        f"TTFT  {_seconds(r.ttft)}",
        f"TPOT  {_seconds(r.tpot)}",
        f"SLO (TTFT <= {r.slo_ttft:g} s and TPOT <= {r.slo_tpot:g} s): {r.slo_attainment * 100:.1f}% of "
        f"{r.completed} requests finished in the window",
        f"at the end: {r.in_flight_at_end} in flight, {r.waiting_at_end} waiting for KV room"
        + (f", {r.rejected} rejected (longer than any route's KV cache)" if r.rejected else ""),
        "",
    ]
    name = max([len("node"), *(len(n.name) for n in r.nodes)])  # columns fit the names (a100-80gb-us-east-0)
    gpu = max([len("gpu"), *(len(n.gpu) for n in r.nodes)])
    lines.append(f"{'node':<{name}} {'gpu':<{gpu}} {'layers':>9} {'busy':>6} {'kv mean':>8} {'kv max':>7} "
                 f"{'queue':>7} {'max q':>6}")
    for n in sorted(r.nodes, key=lambda n: (n.start, n.name)):
        lines.append(f"{n.name:<{name}} {n.gpu:<{gpu}} {f'[{n.start},{n.end})':>9} {n.busy * 100:5.0f}% "
                     f"{n.kv_mean * 100:7.0f}% {n.kv_max * 100:6.0f}% {n.queue_mean:7.1f} {n.queue_max:6.0f}")
    lines += ["", f"simulated {r.warmup + r.duration:.0f} s in {r.wall_seconds:.1f} s wall "
                  f"({r.sim_seconds_per_wall_second:.0f} simulated s per wall s)"]
    return "\n".join(lines) + "\n"
