"""What the handlers share, created once per operator run and passed through kopf's memo."""

from dataclasses import dataclass, field

from helix_operator.api.meta import dns_name
from helix_operator.control.capacity import CapacityPoller
from helix_operator.control.inbox import Inbox
from helix_operator.control.kube import Kube
from helix_operator.control.observe import Observer
from helix_operator.fleet.discovery import NodeFacts
from helix_operator.planning.runner import PlanRunner
from helix_operator.status.metrics import Metrics
from helix_planner.profiles import Catalog

Key = tuple[str, str]  # (namespace, name) of a HelixCluster


@dataclass
class Inboxes:
    """The inbox of every running controller, so watch handlers can wake the right ones."""

    by_key: dict[Key, Inbox] = field(default_factory=dict)

    def notify(self, key: Key, kind: str) -> None:
        inbox = self.by_key.get(key)
        if inbox is not None:
            inbox.notify(kind)

    def notify_labelled(self, namespace: str, cluster_label: str, kind: str) -> None:
        """Wake the cluster whose children carry `cluster_label` (its name as a DNS label)."""
        for key, inbox in self.by_key.items():
            if key[0] == namespace and dns_name(key[1]) == cluster_label:
                inbox.notify(kind)

    def notify_all(self, kind: str) -> None:
        for inbox in self.by_key.values():
            inbox.notify(kind)


@dataclass
class NodeChanges:
    """Last facts seen per node: status heartbeats change nothing the operator reads and wake nobody."""

    seen: dict[str, NodeFacts] = field(default_factory=dict)

    def changed(self, name: str, facts: NodeFacts | None) -> bool:
        if facts is None:
            return self.seen.pop(name, None) is not None
        if self.seen.get(name) == facts:
            return False
        self.seen[name] = facts
        return True


@dataclass
class OperatorContext:
    kube: Kube
    planner: PlanRunner
    catalog: Catalog
    metrics: Metrics
    observer: Observer
    capacity: CapacityPoller
    inboxes: Inboxes = field(default_factory=Inboxes)
    node_changes: NodeChanges = field(default_factory=NodeChanges)
    resync_seconds: float = 300.0
