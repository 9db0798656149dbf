"""Input files read strictly: unknown keys refused with a did-you-mean, YAML loading bounded.

A misspelt key (`regoin:`, `intraRegon:`) used to be ignored, so the planner silently used a
default (region `default`, the default network) and still reported an "optimal" plan. And
YAML aliases can describe an exponentially large document in a few lines (a "billion laughs"
file hung `helix plan`), so documents are capped in size, and in values once aliases expand.
"""

import difflib
import math
from collections.abc import Collection, Mapping
from typing import Any

import yaml

from helix_planner.errors import PlanningError

MAX_YAML_BYTES = 16 << 20
MAX_EXPANDED_NODES = 1_000_000  # scalars, lists and mappings once every alias is expanded


def check_keys(data: Mapping[str, Any], allowed: Collection[str], where: str) -> None:
    """Refuse keys of `data` outside `allowed`, naming the closest allowed one."""
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1)
            hint = f"; did you mean `{close[0]}`?" if close else f"; known keys: {', '.join(sorted(allowed))}"
            raise PlanningError(f"unknown key `{key}` in {where}{hint}")


def mapping(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PlanningError(f"{where} must be a mapping, not {type(value).__name__}")
    return value


def load_yaml(text: str, where: str) -> Any:
    """`yaml.safe_load`, refusing documents over MAX_YAML_BYTES or over MAX_EXPANDED_NODES once
    aliases are expanded (counted on the composed graph, without expanding it)."""
    if len(text.encode()) > MAX_YAML_BYTES:
        raise PlanningError(f"{where} is larger than {MAX_YAML_BYTES >> 20} MiB")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}, set()) > MAX_EXPANDED_NODES:
            raise PlanningError(f"{where} expands through its aliases (`*name`) to more than "
                                f"{MAX_EXPANDED_NODES:,} values: refused")
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        raise PlanningError(f"cannot read {where}: {err}") from None
    finally:
        loader.dispose()


def _expanded_size(node: yaml.Node, sizes: dict[int, float], open_nodes: set[int]) -> float:
    """Values under `node` with aliases expanded; a node that contains itself is infinite."""
    key = id(node)
    if key in open_nodes:
        return math.inf
    if key not in sizes:
        open_nodes.add(key)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [part for pair in node.value for part in pair]
        sizes[key] = 1 + sum(_expanded_size(child, sizes, open_nodes) for child in children)
        open_nodes.discard(key)
    return sizes[key]
