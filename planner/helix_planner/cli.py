"""`helix`: one command line, subcommands contributed by each installed component.

Components register through the `helix.commands` entry-point group a function
`register(subparsers)` that adds their subcommands, each with `set_defaults(func=...)`
where `func(args) -> int`. The planner thus never imports the worker or the operator.
"""

import argparse
import logging
import sys
from importlib.metadata import entry_points

from helix_planner.errors import PlanningError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="helix",
        description="Serve LLMs over heterogeneous GPUs: plan layer placement by max flow, simulate, serve.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for entry in sorted(entry_points(group="helix.commands"), key=lambda e: e.name):
        try:
            register = entry.load()
        except ImportError as err:  # a component installed without its dependencies
            print(f"warning: `helix` commands of {entry.name!r} are unavailable: {err}", file=sys.stderr)
            continue
        register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run(build_parser(), argv)


def run(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> int:
    """Parse, set up logging and run the chosen command; user errors are one line, exit 2."""
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except PlanningError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
