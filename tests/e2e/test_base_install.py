"""`helix` with only the base installed: the planner's commands run, and a command of a component
whose extra is missing says in one line which extra to install. The extras are emulated by
hiding, in a child interpreter, every module that a distribution of an extra (and not of the
base) provides."""

import json
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
HIDE = """
import contextlib, importlib.abc, io, json, sys
HIDDEN = set(sys.argv[1].split(","))
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.partition(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Hide())
from helix_planner.cli import main
results = []
for argv in json.loads(sys.argv[2]):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    results.append((code, out.getvalue(), err.getvalue()))
print(json.dumps(results))
"""


def _extra_only_modules() -> str:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    base = {canonicalize_name(Requirement(p).name) for p in project["dependencies"]}
    extras = {canonicalize_name(Requirement(p).name) for deps in project["optional-dependencies"].values()
              for p in deps} - base - {canonicalize_name(project["name"])}
    modules = {module for module, dists in packages_distributions().items()
               if {canonicalize_name(d) for d in dists} & extras}
    assert {"torch", "kopf", "kmock", "grpc_tools"} <= modules, modules
    return ",".join(sorted(modules))


def helix(*commands: list[str]) -> list[tuple[int, str, str]]:
    """(exit code, stdout, stderr) of each command, run one after the other in one child interpreter."""
    result = subprocess.run([sys.executable, "-c", HIDE, _extra_only_modules(), json.dumps(commands)],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return [tuple(r) for r in json.loads(result.stdout)]


def test_the_planner_runs_and_other_commands_name_their_extra_in_one_line() -> None:
    (plan_code, plan_out, plan_err), *missing = helix(
        ["plan", "geo-demo", "--time-limit", "1", "--threads", "1", "--no-simulate", "-o", "table"],
        ["up"], ["operator", "run"], ["dev", "cluster"])
    assert plan_code == 0 and "tok/s" in plan_out, plan_err  # stderr: the solver's progress, no warning
    assert "warning" not in plan_err and "Traceback" not in plan_err, plan_err
    for (code, out, err), (command, extra) in zip(missing, [("up", "worker"), ("operator", "operator"),
                                                           ("dev", "dev")], strict=True):
        lines = err.splitlines()
        assert code == 2 and out == "" and len(lines) == 1, err
        assert lines[0].startswith(f"error: `helix {command}`: it needs the [{extra}] extra"), lines[0]
        assert "No module named" in lines[0]
        assert f"pip install --extra-index-url https://download.pytorch.org/whl/cpu -e '.[{extra}]'" in lines[0]
