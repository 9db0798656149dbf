"""Names, labels and owner references every child object shares."""

import hashlib
import re
from collections.abc import Mapping
from typing import Any

from helix_operator.api import names

MANAGED_BY = "helix-operator"


def condition_true(status: Mapping[str, Any] | None, kind: str) -> bool:
    """Whether an object's `status` lists condition `kind` as "True" (Ready, FrontendReady...)."""
    return any(c.get("type") == kind and c.get("status") == "True" for c in (status or {}).get("conditions") or [])


def dns_name(*parts: str, limit: int = 63) -> str:
    """Join parts into a DNS-1123 label; too long, it keeps a readable head and a hash tail."""
    text = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    if len(text) <= limit:
        return text
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{text[: limit - 9].rstrip('-')}-{digest}"


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    """Makes the HelixCluster the controller of a child: deleting it deletes the child."""
    metadata = owner["metadata"]
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.HELIXCLUSTER_KIND,
        "name": metadata["name"],
        "uid": metadata["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(cluster: str, component: str) -> dict[str, str]:
    return {
        names.LABEL_NAME: "helix",
        names.LABEL_INSTANCE: dns_name(cluster),
        names.LABEL_COMPONENT: component,
        names.LABEL_MANAGED_BY: MANAGED_BY,
        names.LABEL_CLUSTER: dns_name(cluster),
    }


def selector(cluster: str, component: str) -> dict[str, str]:
    """The labels that pick one component of one cluster (immutable in Deployments)."""
    return {names.LABEL_CLUSTER: dns_name(cluster), names.LABEL_COMPONENT: component}


def child_metadata(owner: Mapping[str, Any], name: str, component: str, **extra: Any) -> dict[str, Any]:
    cluster = owner["metadata"]["name"]
    metadata = {
        "name": name,
        "namespace": owner["metadata"]["namespace"],
        "labels": labels(cluster, component),
        "ownerReferences": [owner_reference(owner)],
    }
    for key, value in extra.items():
        if key in ("labels", "annotations"):
            metadata[key] = {**metadata.get(key, {}), **value}
        else:
            metadata[key] = value
    return metadata


def plan_configmap_name(cluster: str, plan_hash: str) -> str:
    return dns_name(cluster, "plan", plan_hash, limit=253)


def peers_configmap_name(cluster: str) -> str:
    return dns_name(cluster, "peers", limit=253)
