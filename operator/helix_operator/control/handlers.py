"""kopf handlers: they only register interest and delegate.

Watches wake controllers (nodes, GPU profiles, owned pods and Deployments), indices keep the
node and profile facts controllers read, the spec handler validates, one daemon per
HelixCluster runs its `Controller`, and timers read its front end's observed throughput
while the front end is ready, and its observed capacity where the spec asks for it (waking
the controller to judge drift).
"""

from typing import Any

import kopf

from helix_operator.api import names
from helix_operator.api.meta import MANAGED_BY
from helix_operator.api.spec import SpecError, parse_spec
from helix_operator.control.capacity import capacity_enabled
from helix_operator.control.controller import Controller
from helix_operator.control.inbox import CAPACITY, NODES, PODS, PROFILES, SPEC
from helix_operator.control.observe import frontend_ready
from helix_operator.fleet.catalog import gpu_type_from_profile
from helix_operator.fleet.discovery import node_facts
from helix_planner.errors import PlanningError

HELIXCLUSTERS = (names.GROUP, names.VERSION, names.HELIXCLUSTERS)
GPUPROFILES = (names.GROUP, names.VERSION, names.GPUPROFILES)
CHILD_LABELS = {names.LABEL_MANAGED_BY: MANAGED_BY}
DAEMON_EXIT_SECONDS = 5.0


def register(registry: kopf.OperatorRegistry, *, observe_seconds: float) -> None:
    """Add every handler to `registry` (one per operator run, not the process-global one)."""

    @kopf.index("", "v1", "nodes", id="nodes", registry=registry)
    def index_node(body: kopf.Body, name: str, **_: Any) -> dict[str, Any]:
        return {name: node_facts(body)}

    @kopf.on.event("", "v1", "nodes", registry=registry)
    def node_changed(body: kopf.Body, name: str, type: str | None, memo: kopf.Memo, **_: Any) -> None:
        facts = None if type == "DELETED" else node_facts(body)
        if memo.context.node_changes.changed(name, facts):
            memo.context.inboxes.notify_all(NODES)

    @kopf.index(*GPUPROFILES, id="gpuprofiles", registry=registry)
    def index_profile(name: str, spec: kopf.Spec, **_: Any) -> dict[str, Any]:
        return {name: dict(spec)}

    @kopf.on.event(*GPUPROFILES, registry=registry)
    def profile_changed(body: kopf.Body, name: str, spec: kopf.Spec, type: str | None, memo: kopf.Memo,
                        **_: Any) -> None:
        if type != "DELETED":
            try:
                gpu_type_from_profile(name, spec)
            except (PlanningError, KeyError, TypeError) as err:
                kopf.warn(body, reason="InvalidGPUProfile", message=f"ignored until fixed: {err}")
        memo.context.inboxes.notify_all(PROFILES)

    @kopf.on.event("", "v1", "pods", labels=CHILD_LABELS, registry=registry)
    @kopf.on.event("apps", "v1", "deployments", labels=CHILD_LABELS, registry=registry)
    def child_changed(namespace: str | None, meta: kopf.Meta, memo: kopf.Memo, **_: Any) -> None:
        if namespace is None:  # pods and Deployments are namespaced; kopf types cluster-scoped objects too
            return
        owners = [ref["name"] for ref in meta.get("ownerReferences") or []
                  if ref.get("kind") == names.HELIXCLUSTER_KIND]
        for owner in owners:
            memo.context.inboxes.notify((namespace, owner), PODS)
        cluster = (meta.get("labels") or {}).get(names.LABEL_CLUSTER)
        if cluster and not owners:  # a front-end pod: its owner is the Deployment's ReplicaSet
            memo.context.inboxes.notify_labelled(namespace, cluster, PODS)

    @kopf.on.resume(*HELIXCLUSTERS, registry=registry)
    @kopf.on.create(*HELIXCLUSTERS, registry=registry)
    @kopf.on.update(*HELIXCLUSTERS, registry=registry)
    def spec_changed(spec: kopf.Spec, namespace: str | None, name: str, memo: kopf.Memo, **_: Any) -> None:
        if namespace is None:  # HelixClusters are namespaced (the CRD's scope)
            return
        memo.context.inboxes.notify((namespace, name), SPEC)
        try:
            parse_spec(spec)
        except SpecError as err:
            raise kopf.PermanentError(str(err)) from None

    @kopf.daemon(*HELIXCLUSTERS, id="controller", cancellation_timeout=DAEMON_EXIT_SECONDS, registry=registry)
    async def run_controller(body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, logger: Any,
                             **kwargs: Any) -> None:
        # kopf passes each index as a keyword named by its id (the indices above).
        nodes, gpuprofiles = kwargs["nodes"], kwargs["gpuprofiles"]
        await Controller(memo.context, body, nodes, gpuprofiles, logger).run(stopped)

    @kopf.timer(*HELIXCLUSTERS, id="observe", interval=observe_seconds, when=frontend_ready, registry=registry)
    async def observe_throughput(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        await memo.context.observer.observe(body, logger)

    @kopf.timer(*HELIXCLUSTERS, id="observe-capacity", interval=observe_seconds, when=capacity_enabled,
                registry=registry)
    async def observe_capacity(body: kopf.Body, memo: kopf.Memo, logger: Any, **_: Any) -> None:
        if await memo.context.capacity.poll(body, logger):
            metadata = body["metadata"]
            memo.context.inboxes.notify((metadata["namespace"], metadata["name"]), CAPACITY)
