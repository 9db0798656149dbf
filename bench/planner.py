"""Planner benchmark: our plans against Helix's published ones on the paper's clusters.

    python bench/planner.py            # 60 s per reference case, 290 s for 200 nodes
    python bench/planner.py --quick    # CI: 8 s per case, 200 nodes with 20 s

For each case, with Helix's own node-capacity model (`--throughput-model helix`), prints our
max flow, the published Helix objective and their ratio, our planning time, our certified
upper bound and gap, and the max flow of the published Helix layout evaluated by our
evaluator (which must reproduce the paper's figure). Reference data: ../shared/helix-reference.
"""

import argparse
import os
import resource
import sys
import time
from pathlib import Path

from helix_planner.flow import evaluate
from helix_planner.io.helix_ini import load_cluster_ini, load_layout_ini
from helix_planner.models import get_model
from helix_planner.planner import PlannerOptions, plan_cluster
from helix_planner.profiles import load_catalog
from helix_planner.synthetic import synthetic_cluster
from helix_planner.throughput.helix import HelixCapacityModel

REFERENCE = Path(os.environ.get("HELIX_REFERENCE", Path(__file__).resolve().parents[2] / "shared" / "helix-reference"))
CASES = [  # cluster, layout directory, model, published Helix objective (tok/s)
    ("single24", "single24-llama70b", "llama2-70b", 1289.6),
    ("geo24", "geo24-llama70b", "llama2-70b", 1212.2),
    ("hetero42", "hetero42-llama70b", "llama2-70b", 4137.5),
    ("small10", "small10-llama30b", "llama1-30b", 286.59),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short time limits (CI)")
    parser.add_argument("--time-limit", type=float, help="seconds per reference case")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    limit = args.time_limit or (8.0 if args.quick else 60.0)
    big_limit = 20.0 if args.quick else 290.0
    catalog = load_catalog()
    header = (f"{'case':<22} {'ours tok/s':>11} {'Helix pub.':>11} {'ratio':>6} {'plan s':>7} "
              f"{'bound':>10} {'gap %':>7} {'Helix layout, our eval':>23} {'vs pub.':>8}")
    print(f"planner benchmark: throughput model helix, {args.threads} threads, time limit {limit:.0f}s per case")
    print(header)
    print("-" * len(header))
    failures = []
    for cluster_name, layout_dir, model_name, published in CASES:
        cluster = load_cluster_ini(REFERENCE / "clusters" / f"{cluster_name}.ini")
        model = get_model(model_name)
        capacity = HelixCapacityModel(catalog, model.name, model.num_layers, cluster.gpu_counts())
        reproduced = evaluate(cluster, model, capacity,
                              load_layout_ini(REFERENCE / "layouts" / layout_dir / "helix.ini", cluster)).value
        plan = plan_cluster(cluster, model, PlannerOptions(time_limit=limit, threads=args.threads,
                                                           throughput_model="helix"), catalog=catalog)
        ratio = plan.throughput / published
        print(f"{cluster_name + ' ' + model_name:<22} {plan.throughput:>11.1f} {published:>11.1f} {ratio:>6.3f} "
              f"{plan.solver.seconds:>7.1f} {plan.upper_bound:>10.1f} {plan.gap * 100:>7.3f} {reproduced:>23.1f} "
              f"{(reproduced / published - 1) * 100:>+7.2f}%", flush=True)
        if abs(reproduced / published - 1) > 0.005:
            failures.append(f"{cluster_name}: evaluator gives {reproduced:.1f}, paper {published}")
        if plan.throughput < min(published, reproduced) * (1 - 1e-6):  # the paper rounds its figures
            failures.append(f"{cluster_name}: ours {plan.throughput:.2f} below Helix's {published}")
    started = time.monotonic()
    big = synthetic_cluster(200, 4, seed=0)
    model = get_model("llama2-70b")
    plan = plan_cluster(big, model, PlannerOptions(time_limit=big_limit, threads=args.threads, throughput_model="helix"),
                        catalog=catalog)
    types = len(big.gpu_counts())
    print(f"{'synth 200n/4r/' + str(types) + 'gpu 70B':<22} {plan.throughput:>11.1f} {'-':>11} {'-':>6} "
          f"{time.monotonic() - started:>7.1f} {plan.upper_bound:>10.1f} {plan.gap * 100:>7.3f} {'-':>23} {'-':>8}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak memory {rss:.0f} MiB (ru_maxrss of this process)")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
