"""The live status view of `helix dev cluster`: the HelixCluster, its nodes and pods, endpoints,
recent events and a sample generation, as plain text (a pure function of the objects)."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from helix_dev.fleet import GPU_PRODUCT, REGION, SLOWDOWN
from helix_operator.api.meta import condition_true


@dataclass
class Snapshot:
    cluster: Mapping[str, Any] | None
    nodes: Sequence[Mapping[str, Any]]
    pods: Sequence[Mapping[str, Any]]
    events: Sequence[Mapping[str, Any]] = ()
    endpoints: Mapping[str, str] = field(default_factory=dict)
    step: str = ""
    sample: str = ""


def _ready(pod: Mapping[str, Any]) -> bool:
    return condition_true(pod.get("status"), "Ready")


def _pod_line(pod: Mapping[str, Any]) -> str:
    status = pod.get("status") or {}
    metadata = pod["metadata"]
    restarts = sum(c.get("restartCount", 0) for c in status.get("containerStatuses") or [])
    state = "Terminating" if metadata.get("deletionTimestamp") else status.get("phase", "Pending")
    layers = (metadata.get("annotations") or {}).get("helix.dev/layers", "")
    return (f"{metadata['name'][:44]:<45}{layers:>6}  {state:<12}{'ready' if _ready(pod) else '-':<7}"
            f"{restarts:>3}")


def render(snapshot: Snapshot) -> str:
    lines = []
    status = (snapshot.cluster or {}).get("status") or {}
    active, rollout = status.get("activePlan") or {}, status.get("rollout") or {}
    name = (snapshot.cluster or {}).get("metadata", {}).get("name", "-")
    lines.append(f"HelixCluster {name}: {status.get('phase', 'Pending')}"
                 + (f"   plan {active['hash']}  {active['tokensPerSecond']} tok/s planned  {active['pipelines']} "
                    f"pipelines over {active['nodes']} nodes" if active else "")
                 + (f"  {status['observedTokensPerSecond']} tok/s observed" if "observedTokensPerSecond" in status
                    else ""))
    if rollout:
        lines.append(f"  rollout {rollout.get('state')}: {rollout.get('readyWorkers')}/{rollout.get('desiredWorkers')} "
                     f"workers of plan {rollout.get('targetHash')} ready, {rollout.get('drainingWorkers')} draining")
    replan = status.get("lastReplan") or {}
    if replan:
        lines.append(f"  last replan: {replan.get('trigger')} -> {replan.get('outcome')}: {replan.get('message', '')}")
    by_node: dict[str, list[Mapping[str, Any]]] = {}
    for pod in snapshot.pods:
        by_node.setdefault((pod.get("spec") or {}).get("nodeName") or "(pending)", []).append(pod)
    lines.append("")
    lines.append(f"{'NODE':<12}{'GPU':<10}{'REGION':<9}{'SLOW':<6}{'POD':<45}{'LAYERS':>6}  {'PHASE':<12}"
                 f"{'READY':<7}{'RST':>3}")
    for node in snapshot.nodes:
        labels = node["metadata"].get("labels") or {}
        gpu = labels.get(GPU_PRODUCT, "-")
        slowdown = f"{SLOWDOWN[gpu]:g}x" if gpu in SLOWDOWN else "-"
        head = f"{node['metadata']['name']:<12}{gpu:<10}{labels.get(REGION, '-'):<9}{slowdown:<6}"
        pods = by_node.pop(node["metadata"]["name"], [])
        lines += [head + _pod_line(p) for p in pods] or [head + "(no pod)"]
    for node_name, pods in by_node.items():
        lines += [f"{node_name:<37}" + _pod_line(p) for p in pods]
    if snapshot.endpoints:
        lines.append("")
        lines += [f"{what:<14}{where}" for what, where in snapshot.endpoints.items()]
    if snapshot.events:
        lines.append("")
        lines += [f"event  {e.get('type', ''):<8}{e.get('reason', ''):<18}{e.get('message', '')[:90]}"
                  for e in snapshot.events[-5:]]
    if snapshot.step:
        lines += ["", f">> {snapshot.step}"]
    if snapshot.sample:
        lines += ["", f"sample  {snapshot.sample}"]
    return "\n".join(lines)
