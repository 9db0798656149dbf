"""Load a cluster by path (Helix `.ini` or the project's YAML) or by bundled example name."""

from pathlib import Path

from helix_planner.cluster import Cluster
from helix_planner.errors import PlanningError
from helix_planner.io.cluster_yaml import load_cluster_yaml
from helix_planner.io.helix_ini import load_cluster_ini
from helix_planner.models import ModelSpec

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "examples"
DEFAULT_CLUSTER = "geo-demo"  # what `helix plan` and `helix simulate` run without a cluster argument


def example_names() -> list[str]:
    return sorted(p.stem for p in EXAMPLES_DIR.glob("*.yaml"))


def load_cluster(source: str) -> tuple[Cluster, ModelSpec | None]:
    """`source` is a file path or the name of a bundled example (see `example_names`)."""
    path = Path(source)
    if not path.exists() and (EXAMPLES_DIR / f"{source}.yaml").exists():
        path = EXAMPLES_DIR / f"{source}.yaml"
    if not path.exists():
        raise PlanningError(f"cluster file {source!r} not found; give a .ini or .yaml path or one of the "
                            f"bundled examples: {', '.join(example_names())}")
    if path.suffix == ".ini":
        return load_cluster_ini(path), None
    if path.suffix in (".yaml", ".yml"):
        return load_cluster_yaml(path)
    raise PlanningError(f"{path}: unknown cluster format; use a Helix .ini file or the project's .yaml format")
