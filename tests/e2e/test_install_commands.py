"""The README's two set-up commands install on a machine with nothing but the indexes they
name: every pinned distribution with a local version label (torch's `+cpu`) must come from an
index the command names, and CI runs the test command verbatim."""

import re
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Local version labels and the public index that serves them.
LOCAL_VERSION_INDEXES = {"cpu": "https://download.pytorch.org/whl/cpu"}


def _setup_commands() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Set up"):]
    return re.findall(r"^python3 -m venv \.venv && .*$", section, flags=re.MULTILINE)[:2]


def _pins() -> list[str]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return [*project["dependencies"], *(p for extra in project["optional-dependencies"].values() for p in extra)]


def test_every_local_version_pin_is_served_by_an_index_the_commands_name() -> None:
    commands = _setup_commands()
    assert len(commands) == 2 and "helix up" in commands[0] and "pytest" in commands[1], commands
    local = [pin for pin in _pins() if "+" in pin]
    assert local, "expected torch's +cpu pin"
    for pin in local:
        label = pin.split("+", 1)[1].split(";")[0].strip()
        index = LOCAL_VERSION_INDEXES.get(label)
        assert index is not None, f"{pin}: no known index serves the local version +{label}"
        for command in commands:
            assert f"--extra-index-url {index}" in command or f"--index-url {index}" in command, (
                f"{pin} is only on {index}, which this README command does not name: {command}")


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    assert _setup_commands()[1] in (REPO / ".ci" / "run").read_text()


def test_the_worker_images_install_from_the_same_indexes() -> None:
    for dockerfile in ("Dockerfile.worker-cpu", "Dockerfile.operator"):
        assert f"--extra-index-url {LOCAL_VERSION_INDEXES['cpu']}" in (REPO / "docker" / dockerfile).read_text()
