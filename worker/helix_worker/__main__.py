"""`python -m helix_worker COMMAND`: the data plane's commands alone (what worker images run).

Same subcommands and error handling as `helix`, without loading other components.
"""

import argparse
import sys

from helix_planner.cli import register_component, run
from helix_worker.commands import register


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helix_worker", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    register_component(parser.add_subparsers(dest="command", metavar="COMMAND", required=True), "worker", register)
    return run(parser, argv)


if __name__ == "__main__":
    sys.exit(main())
