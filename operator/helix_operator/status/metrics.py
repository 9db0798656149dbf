"""Prometheus metrics of the operator, on a registry of its own (no process-global state)."""

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

PLAN_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        cluster = ["namespace", "name"]
        self.reconciles = Counter("helix_operator_reconciles", "Reconciles of a HelixCluster by result.",
                                  cluster + ["result"], registry=self.registry)
        self.plan_seconds = Histogram("helix_operator_plan_seconds", "Wall time of one planner run.", cluster,
                                      buckets=PLAN_BUCKETS, registry=self.registry)
        self.planned_tokens = Gauge("helix_operator_planned_tokens_per_second",
                                    "Planned throughput of the active plan.", cluster, registry=self.registry)
        self.gap = Gauge("helix_operator_plan_gap_ratio", "Active plan's gap to its certified upper bound.",
                         cluster, registry=self.registry)
        self.replans = Counter("helix_operator_replans", "Planner runs by trigger and outcome.",
                               cluster + ["trigger", "outcome"], registry=self.registry)

    def forget(self, namespace: str, name: str) -> None:
        """Drop a deleted HelixCluster's gauges so they stop being exported."""
        for gauge in (self.planned_tokens, self.gap):
            try:
                gauge.remove(namespace, name)
            except KeyError:
                pass

    def serve(self, port: int) -> None:
        start_http_server(port, registry=self.registry)
