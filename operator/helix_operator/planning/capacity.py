"""Observed capacity in the operator: effective profiles, drift, and what the status says of them.

The control layer polls the front end's observed-capacity document (`helix_planner.observed`)
and hands each new one to `CapacityWatch.observe`, with the cluster the planner would see. The
watch keeps a `DriftTracker` with the spec's settings (a new watch when they or the model change) and the
latest ratios, the *effective profiles*, which the status shows (`summary`). A sustained drift
makes the controller replan with the effective inputs (trigger `CapacityDrift`); whatever the
outcome, `acted` settles the drift, so the same drift does not replan again.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from helix_operator.api.spec import ObservedCapacitySpec
from helix_planner.cluster import Cluster
from helix_planner.models import ModelSpec
from helix_planner.observed import Drift, DriftTracker, Observed, Sustained, beyond, measured_ratios
from helix_planner.profiles import Catalog

NOT_OBSERVED, AS_PROFILED, DRIFTING = "NotObserved", "AsProfiled", "Drifting"


@dataclass
class CapacityWatch:
    """One HelixCluster's observed capacity between reconciles."""

    spec: ObservedCapacitySpec = ObservedCapacitySpec()
    model: ModelSpec | None = None  # what the ratios were judged for
    tracker: DriftTracker = field(default_factory=DriftTracker)
    observed: Observed | None = None  # the latest document of the active plan
    ratios: list[Drift] = field(default_factory=list)
    at: str = ""  # when `observed` was read (status time)
    sustained: Sustained | None = None
    outcome: tuple[str, str] | None = None  # (reason, message) of the last drift replan

    @classmethod
    def start(cls, spec: ObservedCapacitySpec, model: ModelSpec) -> "CapacityWatch":
        """A watch for these settings and this model (another of either starts a new one: the old
        one's clocks and baselines used other numbers, its observations timed other layers)."""
        return cls(spec, model, DriftTracker(spec.drift_threshold, spec.debounce, spec.min_gain_percent / 100))

    def observe(self, observed: Observed, at: str, now: float, cluster: Cluster, catalog: Catalog,
                model: ModelSpec) -> Sustained | None:
        """Take a new document; the sustained drift, if any (it stays pending until `acted`)."""
        self.observed, self.at = observed, at
        self.ratios = measured_ratios(cluster, catalog, model, observed)
        self.sustained = self.tracker.update(self.ratios, now)
        return self.sustained

    def acted(self, reason: str, message: str) -> None:
        """A drift replan ran (applied, kept or failed): what it acted on is the new baseline."""
        self.tracker.settle()
        self.sustained, self.outcome = None, (reason, message)

    def drifted(self) -> list[Drift]:
        """Nodes and links off their catalog description now (the effective profiles that differ)."""
        return [d for d in self.ratios if beyond(d.ratio, 1.0, self.spec.drift_threshold)]

    def condition(self) -> tuple[bool | None, str, str]:
        """(status, reason, message) of the CapacityDrift condition; None status: not known yet."""
        if self.observed is None:
            return None, NOT_OBSERVED, "no observed-capacity document from the front end yet"
        pending = self.tracker.since
        if pending:
            waiting = "; ".join(d.description for k, d in self.tracker.latest.items() if k in pending)
            return True, DRIFTING, f"{waiting} (replans after {self.spec.debounce:g} s of drift)"
        drifted = self.drifted()
        if not drifted:
            return False, AS_PROFILED, "every observed node and link is within the drift threshold of its profile"
        reason, message = self.outcome or (DRIFTING, "")
        listed = "; ".join(d.description for d in drifted)
        return True, reason, f"{listed}{': ' + message if message else ''}"

    def summary(self) -> dict[str, Any] | None:
        """status.observedCapacity: the effective profiles (every node and link with enough samples)."""
        if self.observed is None:
            return None
        nodes: dict[str, Mapping[str, Any]] = {}
        links: dict[str, Mapping[str, Any]] = {}
        for drift in self.ratios:
            if drift.is_link:
                links[drift.key] = {"bandwidthShare": round(drift.ratio, 3)}
            else:
                nodes[drift.key] = {"slowdown": round(drift.ratio, 3)}
        return {"time": self.at, "planHash": self.observed.plan_hash, "nodes": nodes, "links": links}
