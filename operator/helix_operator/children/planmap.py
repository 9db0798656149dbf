"""The plan ConfigMap: one immutable ConfigMap per plan hash, holding the plan document.

Each worker pod mounts the plan it was created for and the front end mounts the active one,
so a pod never sees its plan change underneath it; unreferenced plan ConfigMaps are deleted.
"""

from collections.abc import Mapping
from typing import Any

from helix_operator.api import names
from helix_operator.api.meta import child_metadata, plan_configmap_name
from helix_planner.plan_format import Plan

CONFIGMAP_LIMIT = 1024 * 1024
ANNOTATION_INPUTS = "helix.dev/inputs"
ANNOTATION_PROPOSED = "helix.dev/proposed"


class PlanTooLarge(ValueError):
    """The plan document exceeds what a ConfigMap may hold."""

    reason = "PlanTooLarge"


def build_plan_configmap(owner: Mapping[str, Any], plan: Plan, inputs: str, *,
                         proposed: bool = False) -> dict[str, Any]:
    document = plan.to_json(indent=None)
    if len(document.encode()) > CONFIGMAP_LIMIT:
        raise PlanTooLarge(f"the plan document is {len(document) // 1024} KiB, over the 1 MiB ConfigMap limit")
    annotations = {ANNOTATION_INPUTS: inputs}
    if proposed:
        annotations[ANNOTATION_PROPOSED] = "true"
    name = plan_configmap_name(owner["metadata"]["name"], plan.plan_hash)
    metadata = child_metadata(owner, name, names.COMPONENT_PLAN, labels={names.LABEL_PLAN_HASH: plan.plan_hash},
                              annotations=annotations)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "immutable": True,
            "data": {names.PLAN_KEY: document}}
