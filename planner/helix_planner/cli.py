"""`helix`: one command line, subcommands contributed by each installed component.

Components register through the `helix.commands` entry-point group a function
`register(subparsers)` that adds their subcommands, each with `set_defaults(func=...)`
where `func(args) -> int`. The planner thus never imports the worker or the operator.
Only the planner's dependencies are always installed; each other component's are the package
extra named like its entry point, and a command run without them says which extra to install.
"""

import argparse
import logging
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, entry_points, metadata

from helix_planner.errors import PlanningError

DISTRIBUTION = "helix-k8s"
# How the README installs an extra (torch, in the worker's, is only on the PyTorch CPU index).
INSTALL = "pip install --extra-index-url https://download.pytorch.org/whl/cpu -e '.[{extra}]'"


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
            print(f"warning: `helix` commands of {entry.name!r} are unavailable: {missing(entry.name, err)}",
                  file=sys.stderr)
            continue
        register_component(subparsers, entry.name, register)
    return parser


def register_component(subparsers: "argparse._SubParsersAction[argparse.ArgumentParser]", component: str,
                       register: Callable[["argparse._SubParsersAction[argparse.ArgumentParser]"], None]) -> None:
    """Add a component's subcommands, each marked with the component, to name its extra on failure."""
    before = set(subparsers.choices)
    register(subparsers)
    for name in set(subparsers.choices) - before:
        subparsers.choices[name].set_defaults(component=component)


def missing(component: str, err: ImportError) -> str:
    """One line: the module that is not installed and the extra of `component` that installs it."""
    try:
        extras = metadata(DISTRIBUTION).get_all("Provides-Extra") or []
    except PackageNotFoundError:  # run from a source tree that was never installed
        extras = []
    if component not in extras:
        return f"{err}; install {DISTRIBUTION} with its dependencies"
    return f"it needs the [{component}] extra, which is not installed ({err}): {INSTALL.format(extra=component)}"


def _is_third_party(err: ModuleNotFoundError) -> bool:
    """A missing dependency, not a missing module of Helix's own (a bug to show in full)."""
    return err.name is not None and err.name != "" and not err.name.partition(".")[0].startswith("helix_")


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
    except ModuleNotFoundError as err:
        if not _is_third_party(err):
            raise
        print(f"error: `helix {args.command}`: {missing(getattr(args, 'component', ''), err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
