"""One HelixCluster's controller loop, run by a kopf daemon for as long as the object exists.

Level-triggered: every wake-up (spec, node, pod or profile change, new observed capacity,
timer) re-reads the spec and the node index, replans only when the planning inputs moved
(see `replan`) or observed capacity drifted for long enough (see `planning.capacity`), takes
one rollout step, and writes the status if it changed. Planning runs in a thread; a wake-up
that changes the inputs meanwhile supersedes it.
"""

import asyncio
import dataclasses
import logging
import threading
import time
from datetime import UTC, datetime
from typing import Any

from helix_operator.api import names
from helix_operator.api.meta import plan_configmap_name
from helix_operator.api.spec import ClusterSpec, SpecError, parse_spec
from helix_operator.children.frontend import frontend_url
from helix_operator.children.planmap import PlanTooLarge
from helix_operator.children.rollout import COMPLETE
from helix_operator.children.weights import plan_revision
from helix_operator.control import events
from helix_operator.control.context import OperatorContext
from helix_operator.control.hub import hub_access
from helix_operator.control.inbox import NODES, PODS, SPEC, Inbox
from helix_operator.control.kube import Ref
from helix_operator.control.mergepatch import diff
from helix_operator.control.reconcile import (
    PlanRef,
    collect_plans,
    ensure_tls_secret,
    load_plan_ref,
    save_plan,
    stop_workers,
    sync_frontend,
    sync_workers,
)
from helix_operator.fleet.catalog import with_profiles
from helix_operator.fleet.discovery import Discovery, NodeFacts, discover, nodes_problem
from helix_operator.planning.capacity import CapacityWatch
from helix_operator.planning.inputs import InputsKey, build_cluster, inputs_key, memory_shortfall
from helix_operator.planning.replan import (
    APPLIED,
    APPROVED,
    CAPACITY_DRIFT,
    FAILED,
    PROPOSED,
    Decision,
    broken_nodes,
    decide,
    replan_due,
)
from helix_operator.planning.revision import WeightsUnresolved
from helix_operator.planning.runner import PlanRequest, value_on_inputs
from helix_operator.status.build import OWNED, Observation, build_status, conditions, plan_summary
from helix_operator.status.conditions import transitions
from helix_planner.errors import PlanningError
from helix_planner.observed import Sustained
from helix_planner.plan_format import Plan
from helix_planner.profiles import Catalog

DEFAULT_DEBOUNCE = 15.0
MAX_BACKOFF = 60.0


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclasses.dataclass
class Progress:
    """What the controller remembers between wake-ups (rebuilt from status after a restart)."""

    active: PlanRef | None = None      # what the front end serves
    target: PlanRef | None = None      # what the workers converge to
    proposed: PlanRef | None = None    # DryRun / Manual proposal
    attempted: InputsKey | None = None
    last_replan: float | None = None   # monotonic
    last_record: dict[str, Any] | None = None
    plan_problem: tuple[str, str] | None = None
    workers: tuple[str, str] | None = None
    frontend: tuple[str, str] | None = None
    rollout: dict[str, Any] | None = None
    active_since: str = ""


class Controller:
    def __init__(self, ctx: OperatorContext, body: Any, nodes: Any, profiles: Any, logger: logging.Logger) -> None:
        self.ctx = ctx
        self.body = body            # kopf's live view: always the latest state of the object
        self.nodes = nodes          # kopf index: node name -> NodeFacts
        self.profiles = profiles    # kopf index: GPUProfile name -> spec
        self.logger = logger
        self.inbox = Inbox()
        self.state = Progress()
        self.status: dict[str, Any] = {}
        self.debounce = DEFAULT_DEBOUNCE
        self.deferred: float | None = None
        self.failures = 0
        self.capacity = CapacityWatch()
        self.capacity_read = 0.0  # monotonic time of the last observed-capacity reading judged

    @property
    def namespace(self) -> str:
        namespace: str = self.body["metadata"]["namespace"]
        return namespace

    @property
    def name(self) -> str:
        name: str = self.body["metadata"]["name"]
        return name

    @property
    def owner(self) -> dict[str, Any]:
        meta = self.body["metadata"]
        return {"metadata": {"name": meta["name"], "namespace": meta["namespace"], "uid": meta["uid"]}}

    async def run(self, stopped: Any) -> None:
        """Reconcile until kopf says stop (object deleted, operator exiting or paused by a peer)."""
        key = (self.namespace, self.name)
        self.ctx.inboxes.by_key[key] = self.inbox
        stop = asyncio.ensure_future(stopped.wait())
        try:
            await self._recover()
            wake: set[str] = {SPEC}
            while not stopped:
                retry_in = await self._reconcile_safely(wake)
                waiter = asyncio.ensure_future(self.inbox.wait(self.debounce, self._deadline(retry_in)))
                done, _ = await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
                if stop in done:
                    waiter.cancel()
                    break
                wake = waiter.result()
        finally:
            stop.cancel()
            if self.ctx.inboxes.by_key.get(key) is self.inbox:
                del self.ctx.inboxes.by_key[key]
            if self.body["metadata"].get("deletionTimestamp"):
                self.ctx.metrics.forget(self.namespace, self.name)
                self.ctx.observer.forget(key)
                self.ctx.capacity.forget(key)

    def _deadline(self, retry_in: float | None) -> float:
        now = time.monotonic()
        candidates = [now + self.ctx.resync_seconds]
        if self.deferred is not None:
            candidates.append(self.deferred)
        if retry_in is not None:
            candidates.append(now + retry_in)
        return min(candidates)

    async def _reconcile_safely(self, wake: set[str]) -> float | None:
        """Reconcile; on an unexpected error log it and return the backoff before retrying."""
        try:
            await self._reconcile(wake)
        except Exception as err:  # the loop must outlive API hiccups and bugs alike
            self.failures += 1
            backoff = min(MAX_BACKOFF, 2.0 ** self.failures)
            self.logger.exception("reconcile failed (%s); retrying in %.0fs", err, backoff)
            self.ctx.metrics.reconciles.labels(self.namespace, self.name, "error").inc()
            return backoff
        self.failures = 0
        self.ctx.metrics.reconciles.labels(self.namespace, self.name, "ok").inc()
        return None

    async def _recover(self) -> None:
        """Pick up where a previous operator left off: plans from their ConfigMaps, times from status."""
        status = dict(self.body.get("status") or {})
        self.status = status
        kube, owner = self.ctx.kube, self.owner
        state = self.state
        state.active = await load_plan_ref(kube, owner, (status.get("activePlan") or {}).get("configMap"))
        state.active_since = (status.get("activePlan") or {}).get("time", "")
        target_hash = (status.get("rollout") or {}).get("targetHash")
        if target_hash and state.active and target_hash != state.active.hash:
            state.target = await load_plan_ref(kube, owner, plan_configmap_name(self.name, target_hash))
        state.target = state.target or state.active
        state.proposed = await load_plan_ref(kube, owner, (status.get("proposedPlan") or {}).get("configMap"))
        record = status.get("lastReplan") or None
        if record:
            state.last_record = dict(record)
            state.attempted = InputsKey.decode(record.get("inputs"))
            state.last_replan = _monotonic_of(record.get("time"))
        elif state.target:
            state.attempted = state.target.inputs

    async def _reconcile(self, wake: set[str]) -> None:
        self.logger.debug("reconciling after %s", ", ".join(sorted(wake)))
        obs = Observation(generation=int(self.body["metadata"].get("generation") or 0))
        try:
            spec = parse_spec(self.body.get("spec") or {})
        except SpecError as err:
            obs.spec_problem = ("InvalidSpec", str(err))
            await self._publish(obs)
            return
        self.debounce = spec.planner.debounce
        obs.mode, obs.suspended = spec.planner.mode, spec.suspend
        catalog = with_profiles(self.ctx.catalog, self._profiles())
        discovery = discover(self._node_facts(), spec.pools, catalog, spec.worker.gpu_resource_name)
        obs.discovery = discovery
        obs.nodes_problem = nodes_problem(discovery, spec.pools)
        serving = self.state.target or self.state.active
        lost = broken_nodes([(n.name, n.gpu_type) for n in serving.plan.nodes], discovery) if serving else []
        if lost and serving is not None:
            obs.degraded = ("NodesLost", f"{len(lost)} node(s) of plan {serving.hash} are gone, NotReady, cordoned "
                                         f"or relabelled: {', '.join(lost[:5])}")
        self.deferred = None
        drift = self._judge_capacity(spec, discovery, catalog)
        if obs.nodes_problem is None and not spec.suspend:
            shortfall = memory_shortfall(spec, discovery, catalog)
            if shortfall:
                obs.plan_problem = ("InsufficientMemory", shortfall)
            elif not await self._maybe_plan(spec, discovery, catalog, obs, bool(lost), drift):
                return  # superseded: the newer inputs get their own reconcile
        self._adopt_proposal(spec)
        await self._converge(spec, discovery, obs)
        await self._publish(obs)

    def _node_facts(self) -> list[NodeFacts]:
        return [facts for store in self.nodes.values() for facts in store]

    def _profiles(self) -> list[tuple[str, Any]]:
        return [(name, spec) for name, store in self.profiles.items() for spec in store]

    def _judge_capacity(self, spec: ClusterSpec, discovery: Discovery, catalog: Catalog) -> Sustained | None:
        """Take the front end's latest observed capacity, if new and of the plan that runs
        (not mid-rollout); the drift that persisted long enough, if any."""
        settings = spec.planner.observed_capacity
        if not settings.enabled:
            self.capacity = CapacityWatch()
            return None
        if (self.capacity.spec, self.capacity.model) != (settings, spec.model):
            self.capacity = CapacityWatch.start(settings, spec.model)
        reading = self.ctx.capacity.latest.get((self.namespace, self.name))
        active, target = self.state.active, self.state.target
        if (reading is None or reading.monotonic <= self.capacity_read or active is None
                or target is not None and target.hash != active.hash or reading.observed.plan_hash != active.hash):
            return self.capacity.sustained
        self.capacity_read = reading.monotonic
        try:
            cluster = build_cluster(self.name, spec, discovery)
            return self.capacity.observe(reading.observed, reading.at, reading.monotonic, cluster, catalog, spec.model)
        except PlanningError as err:  # a node's GPU type left the catalog meanwhile: the next reading tries again
            self.logger.debug("cannot judge observed capacity: %s", err)
            return None

    async def _maybe_plan(self, spec: ClusterSpec, discovery: Discovery, catalog: Any, obs: Observation,
                          broken: bool, drift: Sustained | None) -> bool:
        """Plan if the inputs moved or capacity drifted; False if a newer change superseded the run."""
        state = self.state
        key = inputs_key(spec, discovery, catalog)
        now = time.monotonic()
        due = replan_due(key, state.attempted, broken, state.last_replan, now, spec.planner.replan_min_interval)
        self.deferred = due.not_before
        trigger = due.trigger
        rested = state.last_replan is None or now - state.last_replan >= spec.planner.replan_min_interval
        if trigger is None and drift is not None and state.active is not None and rested:
            trigger = CAPACITY_DRIFT
        if trigger is None:
            return True
        obs.planning = True
        await self._publish(obs)
        previous, previous_attempt = state.target or state.active, state.attempted
        started = time.monotonic()
        try:
            request = PlanRequest(self.name, spec, discovery, catalog, previous=previous.plan if previous else None,
                                  hub=await hub_access(self.ctx.kube, self.namespace, spec),
                                  observed=self.capacity.observed)
            plan = await self._solve(request, key)
            if plan is None:
                return False
            self.ctx.metrics.plan_seconds.labels(self.namespace, self.name).observe(time.monotonic() - started)
            if trigger == CAPACITY_DRIFT and drift is not None and previous is not None:
                active_tps = await asyncio.to_thread(value_on_inputs, request, previous.plan)
                decision = await self._decide(spec, key, trigger, plan, active_tps=active_tps, why=drift.message,
                                              min_gain=spec.planner.observed_capacity.min_gain_percent)
                self.capacity.acted(f"Plan{decision.outcome}", decision.message)
            else:
                await self._decide(spec, key, trigger, plan)
        except (PlanningError, PlanTooLarge, WeightsUnresolved) as err:
            self._record_failure(key, trigger, str(err), getattr(err, "reason", "PlanningFailed"))
            if trigger == CAPACITY_DRIFT:
                self.capacity.acted("PlanFailed", str(err))
            if isinstance(err, WeightsUnresolved):
                state.attempted = previous_attempt  # the Hub may answer later (or the Secret appear): retry at resync
        finally:
            obs.planning = False
        await self._publish(obs)  # the new plan (or the failure) shows before pods are touched
        return True

    async def _solve(self, request: PlanRequest, key: InputsKey) -> Plan | None:
        """The plan, or None when the inputs changed while the planner ran (it is then cancelled)."""
        cancel = threading.Event()
        future = self.ctx.planner.start(request, cancel, self.logger)
        consumed: set[str] = set()
        waiter: asyncio.Future[set[str]] | None = None
        try:
            while True:
                waiter = asyncio.ensure_future(self.inbox.wait(self.debounce, ignore=frozenset({PODS})))
                waiting: set[asyncio.Future[Any]] = {future, waiter}
                done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if waiter in done:
                    consumed |= waiter.result()
                if future in done:
                    return future.result()
                if self._current_key() != key:
                    self.logger.info("planning superseded by a newer spec or node change")
                    return None
        finally:
            # Superseded, or the daemon cancelled (operator stopping, object deleted): the solve
            # stops at its next check instead of running out its time limit on a planner thread.
            cancel.set()
            if waiter is not None:
                waiter.cancel()
            for kind in consumed:
                self.inbox.notify(SPEC if kind == NODES else kind)

    def _current_key(self) -> InputsKey | None:
        try:
            spec = parse_spec(self.body.get("spec") or {})
        except SpecError:
            return None
        catalog = with_profiles(self.ctx.catalog, self._profiles())
        return inputs_key(spec, discover(self._node_facts(), spec.pools, catalog, spec.worker.gpu_resource_name),
                          catalog)

    def _record_failure(self, key: InputsKey, trigger: str, message: str, reason: str) -> None:
        state = self.state
        state.attempted, state.last_replan = key, time.monotonic()
        state.plan_problem = (reason, message)
        state.last_record = {"time": _now(), "trigger": trigger, "outcome": FAILED, "message": message,
                             "inputs": key.encode()}
        self.ctx.metrics.replans.labels(self.namespace, self.name, trigger, FAILED).inc()
        events.post(self.body, "PlanFailed", message, warning=True)

    async def _decide(self, spec: ClusterSpec, key: InputsKey, trigger: str, plan: Plan, *,
                      active_tps: float | None = None, why: str = "", min_gain: float | None = None) -> Decision:
        """Apply, keep or propose `plan` against the current one: its planned tokens/s unless
        `active_tps` scores it otherwise (on effective profiles); `why` joins the message."""
        state = self.state
        current = state.target or state.active
        if active_tps is None and current is not None:
            active_tps = current.plan.throughput
        decision = decide(spec.planner.mode, trigger, active_tps, plan.throughput,
                          spec.planner.min_improvement_percent if min_gain is None else min_gain)
        message = f"{decision.message}; {why}" if why else decision.message
        state.attempted, state.last_replan, state.plan_problem = key, time.monotonic(), None
        if decision.outcome == APPLIED:
            self._retarget(await save_plan(self.ctx.kube, self.owner, plan, key))
        elif decision.outcome == PROPOSED:
            state.proposed = await save_plan(self.ctx.kube, self.owner, plan, key, proposed=True)
        state.last_record = {"time": _now(), "trigger": trigger, "outcome": decision.outcome,
                             "toTokensPerSecond": round(plan.throughput, 1), "message": message,
                             "inputs": key.encode()}
        if active_tps is not None:
            state.last_record["fromTokensPerSecond"] = round(active_tps, 1)
        self.ctx.metrics.replans.labels(self.namespace, self.name, trigger, decision.outcome).inc()
        events.post(self.body, f"Plan{decision.outcome}", f"plan {plan.plan_hash} ({trigger}): {message}")
        return decision

    def _retarget(self, plan: PlanRef) -> None:
        self.state.target = plan
        if self.state.active is None:
            self._activate(plan)

    def _activate(self, plan: PlanRef) -> None:
        self.state.active, self.state.active_since = plan, _now()

    def _adopt_proposal(self, spec: ClusterSpec) -> None:
        """Manual: roll out the proposal once approved; Auto (after DryRun or Manual): at once."""
        state, mode = self.state, spec.planner.mode
        proposal = state.proposed
        if proposal is None or mode == "DryRun":
            return
        if mode == "Manual" and spec.planner.approved_plan_hash != proposal.hash:
            return
        state.proposed = None
        self._retarget(proposal)
        state.last_record = {**(state.last_record or {}), "time": _now(), "trigger": APPROVED, "outcome": APPLIED,
                             "message": f"plan {proposal.hash} approved"}
        events.post(self.body, "PlanApproved", f"rolling out approved plan {proposal.hash}")

    async def _converge(self, spec: ClusterSpec, discovery: Discovery, obs: Observation) -> None:
        """Workers and front end towards the target plan; stop them while suspended."""
        state, kube, owner = self.state, self.ctx.kube, self.owner
        await ensure_tls_secret(kube, owner, spec)  # before any pod that mounts it
        if spec.suspend:
            await stop_workers(kube, owner, spec)
            state.rollout = None
            state.frontend = await sync_frontend(kube, owner, spec, state.active, suspended=True)
        elif state.target and spec.planner.mode != "DryRun":
            step = await sync_workers(kube, owner, spec, discovery, state.target,
                                      state.active.plan if state.active else None)
            if step.switch_frontend and state.active and state.active.hash != state.target.hash:
                self._activate(state.target)
                events.post(self.body, "PlanActivated", f"the front end now serves plan {state.target.hash}")
            state.rollout = step.summary(state.target.hash)
            done = step.state == COMPLETE
            state.workers = ("Ready" if done else "RollingOut",
                             f"{step.ready}/{step.desired} workers of plan {state.target.hash} ready"
                             + ("" if not step.draining else f", {step.draining} draining"))
            state.frontend = await sync_frontend(kube, owner, spec, state.active, suspended=False)
        if state.frontend is not None:  # sync_frontend ensured the Service
            obs.url = frontend_url(owner, spec)
        keep = {p.configmap for p in (state.active, state.target, state.proposed) if p}
        await collect_plans(kube, owner, keep)

    def _fill(self, obs: Observation) -> None:
        state = self.state
        obs.plan_problem = obs.plan_problem or state.plan_problem
        if state.active:
            obs.active = plan_summary(state.active.plan, state.active.configmap, state.active_since or _now())
            obs.revision = plan_revision(state.active.plan)
        if state.proposed:
            obs.proposed = plan_summary(state.proposed.plan, state.proposed.configmap, _now())
        obs.awaiting_approval = obs.mode == "Manual" and state.proposed is not None
        obs.rollout, obs.workers, obs.frontend = state.rollout, state.workers, state.frontend
        obs.last_replan = state.last_record
        if self.capacity.spec.enabled:
            obs.capacity, obs.observed_capacity = self.capacity.condition(), self.capacity.summary()

    async def _publish(self, obs: Observation) -> None:
        """Write the status if it changed, with one event per condition transition."""
        self._fill(obs)
        old = self.status
        new = build_status(obs, old, _now())
        patch = diff(old, new, OWNED)
        if patch:
            ref = Ref(names.API_VERSION, names.HELIXCLUSTERS, self.namespace, self.name)
            await self.ctx.kube.patch(ref, {"status": patch}, subresource="status")
            events.post_transitions(self.body, transitions(old.get("conditions") or [], conditions(obs)))
            self.status = {**{k: v for k, v in old.items() if k not in OWNED}, **new}
        metrics = self.ctx.metrics
        if obs.active:
            metrics.planned_tokens.labels(self.namespace, self.name).set(obs.active["tokensPerSecond"])
            metrics.gap.labels(self.namespace, self.name).set(obs.active.get("gap") or 0.0)


def _monotonic_of(timestamp: str | None) -> float | None:
    """A wall-clock status time as a monotonic instant (for replanMinIntervalSeconds after restarts)."""
    if not timestamp:
        return None
    try:
        then = datetime.strptime(timestamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except ValueError:
        return None
    return time.monotonic() - (datetime.now(UTC) - then).total_seconds()
