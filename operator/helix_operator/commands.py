"""`helix operator ...`: run the operator, or write the CRDs it serves."""

import argparse
import asyncio
import logging
from pathlib import Path

from helix_operator.api import crd


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser("operator", help="the Kubernetes operator for HelixCluster objects")
    commands = parser.add_subparsers(dest="operator_command", metavar="COMMAND", required=True)

    run = commands.add_parser("run", help="reconcile HelixClusters (in-cluster or with your kubeconfig)")
    run.add_argument("-n", "--namespace", action="append", default=[],
                     help="watch only this namespace (repeatable); default: every namespace")
    run.add_argument("--peering", default=None,
                     help="kopf peering object shared by replicas (so two never act on one object)")
    run.add_argument("--priority", type=int, default=0, help="peering priority of this replica")
    run.add_argument("--planner-threads", type=int, default=2, help="planner runs at once (one per HelixCluster)")
    run.add_argument("--metrics-port", type=int, default=8080, help="Prometheus metrics port (0: off)")
    run.add_argument("--health-port", type=int, default=8081, help="liveness endpoint port (0: off)")
    run.add_argument("--observe-seconds", type=float, default=30.0,
                     help="how often each ready front-end pod's token counter is read for "
                          "status.observedTokensPerSecond")
    run.set_defaults(func=_run)

    crds = commands.add_parser("crds", help="write the CustomResourceDefinitions as YAML")
    crds.add_argument("--out", type=Path, default=None, help="directory to write into; default: print them")
    crds.set_defaults(func=_crds)


def _run(args: argparse.Namespace) -> int:
    from helix_operator.control.runtime import RunOptions, in_cluster_or_kubeconfig, run

    logging.getLogger("kopf").setLevel(logging.INFO)
    options = RunOptions(
        namespaces=tuple(args.namespace), peering=args.peering, priority=args.priority,
        planner_threads=args.planner_threads, metrics_port=args.metrics_port or None,
        liveness=f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None,
        observe_seconds=args.observe_seconds,
    )
    asyncio.run(run(options, in_cluster_or_kubeconfig()))
    return 0


def _crds(args: argparse.Namespace) -> int:
    for name, documents in crd.all_crds().items():
        text = crd.render(documents)
        if args.out is None:
            print(text, end="")
        else:
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / name).write_text(text)
    return 0
