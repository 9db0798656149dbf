"""`helix dev cluster`: the whole system (operator, planner, data plane) on a local stand-in cluster."""

import argparse
import tempfile
from pathlib import Path


def register(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    parser = subparsers.add_parser("dev", help="development tools: the whole system on a local stand-in cluster")
    commands = parser.add_subparsers(dest="dev_command", metavar="COMMAND", required=True)
    cluster = commands.add_parser(
        "cluster", help="run the operator against an API emulator with simulated GPU nodes whose pods run as "
                        "local processes; apply the example HelixCluster and show its status live")
    cluster.add_argument("--workdir", type=Path, help="pod directories and logs (default: a temp dir)")
    cluster.add_argument("--scenario", action="store_true",
                         help="after the sample: relabel a node and remove another, kill a worker, delete the cluster")
    cluster.add_argument("--prompt", default="Helix serves large language models over")
    cluster.add_argument("--max-tokens", type=int, default=24)
    cluster.add_argument("--exit-after-sample", action="store_true", help="stop once the sample has streamed")
    cluster.add_argument("--emulate-network", action="store_true",
                         help="run each node's pods in a network namespace of its own, joined by links shaped to the "
                              "HelixCluster's spec.network (bandwidth by tc, latency by relays); needs root")
    cluster.set_defaults(func=_cluster)


def _cluster(args: argparse.Namespace) -> int:
    from helix_dev.demo import DemoOptions, run_demo  # kmock: the [dev] extra (`helix` names it when missing)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="helix-dev-"))
    return run_demo(DemoOptions(workdir, scenario=args.scenario, prompt=args.prompt, max_tokens=args.max_tokens,
                                exit_after_sample=args.exit_after_sample, emulate_network=args.emulate_network))
