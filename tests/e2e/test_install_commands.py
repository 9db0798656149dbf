"""The README's two set-up commands and the images install on a machine with nothing but the
indexes they name: every pinned distribution with a local version label (torch's `+cpu`) that
the chosen extras pull must come from an index the command names, each component's extra
carries only what it runs, and CI runs the test command verbatim."""

import re
import shlex
import tomllib
from importlib.metadata import entry_points
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
# Local version labels and the public index that serves them.
LOCAL_VERSION_INDEXES = {"cpu": "https://download.pytorch.org/whl/cpu"}


def _setup_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Set up"):]
    return re.findall(r"^python3 -m venv \.venv && .*$", section, flags=re.MULTILINE)[:2]


def _pip_install(command: str) -> tuple[set[str], set[str]]:
    """(indexes named, extras of this project installed) of the first `pip install` in `command`."""
    words = shlex.split(command[command.index("pip install") + len("pip install"):].split("&&")[0], comments=True)
    flags = ("--index-url", "--extra-index-url")
    indexes = {url for flag, url in zip(words, words[1:], strict=False) if flag in flags}
    project = next(w for w in words if w == "." or w.startswith(".["))
    return indexes, set(filter(None, project[1:].strip("[]").split(",")))


def _pins(extras: set[str]) -> list[Requirement]:
    """The base pins and every pin of `extras`, following the project's references to its own extras."""
    pins, todo, seen = [Requirement(p) for p in PROJECT["dependencies"]], list(extras), set()
    while todo:
        extra = todo.pop()
        seen.add(extra)
        for requirement in map(Requirement, PROJECT["optional-dependencies"][extra]):
            if requirement.name == PROJECT["name"]:
                todo += sorted(requirement.extras - seen)
            else:
                pins.append(requirement)
    return pins


def _check_indexes(where: str, command: str) -> list[Requirement]:
    indexes, extras = _pip_install(command)
    pins = _pins(extras)
    for pin in pins:
        for label in {str(s.version).partition("+")[2] for s in pin.specifier} - {""}:
            index = LOCAL_VERSION_INDEXES.get(label)
            assert index is not None, f"{pin}: no known index serves the local version +{label}"
            assert index in indexes, f"{where}: {pin} is only on {index}, which `{command}` does not name"
    return pins


def test_every_local_version_pin_is_served_by_an_index_the_commands_name() -> None:
    commands = _setup_commands()
    assert len(commands) == 2 and "helix up" in commands[0] and "pytest" in commands[1], commands
    main, tests = (_check_indexes("README", command) for command in commands)
    assert "torch" in {p.name for p in main}, "`helix up` runs the data plane: the command must install [worker]"
    every_extra = set(PROJECT["optional-dependencies"])
    assert {p.name for p in tests} == {p.name for p in _pins(every_extra)}, "the test command must install every extra"


def test_a_distribution_in_two_lists_has_one_pin() -> None:
    lists = [PROJECT["dependencies"], *PROJECT["optional-dependencies"].values()]
    pins: dict[str, set[str]] = {}
    for requirement in (Requirement(p) for deps in lists for p in deps):
        if requirement.name != PROJECT["name"]:
            pins.setdefault(requirement.name, set()).add(str(requirement.specifier))
    assert {name: specs for name, specs in pins.items() if len(specs) > 1} == {}


def test_every_component_but_the_planner_is_an_extra_named_like_its_entry_point() -> None:
    """The CLI names the missing extra by the component's entry-point name."""
    components = {e.name for e in entry_points(group="helix.commands")}
    assert components - {"planner"} <= set(PROJECT["optional-dependencies"]), components


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    assert _setup_commands()[1] in (REPO / ".ci" / "run").read_text()


def _dockerfile_install(name: str) -> str:
    text = (REPO / "docker" / name).read_text().replace("\\\n", " ")
    return next(line for line in text.splitlines() if line.startswith("RUN pip install"))


def test_the_worker_image_installs_the_worker_extra_from_the_same_indexes() -> None:
    command = _dockerfile_install("Dockerfile.worker-cpu")
    assert _pip_install(command)[1] == {"worker"}, command
    _check_indexes("docker/Dockerfile.worker-cpu", command)


def test_the_operator_image_installs_no_torch_and_no_data_plane() -> None:
    command = _dockerfile_install("Dockerfile.operator")
    assert _pip_install(command)[1] == {"operator"}, command
    names = {p.name for p in _check_indexes("docker/Dockerfile.operator", command)}
    assert not names & {"torch", "transformers", "grpcio", "kmock"}, names


def test_the_cuda_image_installs_the_worker_extra_beside_its_own_torch() -> None:
    text = (REPO / "docker" / "Dockerfile.worker-cuda").read_text()
    assert "['optional-dependencies']['worker']" in text and "['dependencies']" in text
