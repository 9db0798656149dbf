"""Assemble and run one operator: settings, handlers, shared context, planner threads.

The same entry serves `helix operator run`, the tests and the benchmark; they differ only
in how they log in (in-cluster / kubeconfig, or straight to an API emulator).
"""

import asyncio
import logging
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import kopf
from kubernetes.client import Configuration

from helix_operator.control.capacity import CapacityPoller
from helix_operator.control.context import OperatorContext
from helix_operator.control.handlers import register
from helix_operator.control.kube import Kube
from helix_operator.control.observe import Observer, PodAddress, pod_ip_address
from helix_operator.planning.runner import PlanRunner
from helix_operator.status.metrics import Metrics
from helix_planner.profiles import load_catalog

PREFIX = "helix.dev"


@dataclass(frozen=True)
class RunOptions:
    namespaces: tuple[str, ...] = ()      # empty: every namespace
    peering: str | None = None            # kopf peering object; None: standalone
    priority: int = 0
    planner_threads: int = 2
    metrics_port: int | None = None
    liveness: str | None = None           # e.g. http://0.0.0.0:8081/healthz
    resync_seconds: float = 300.0
    observe_seconds: float = 30.0         # how often front-end pods' token counters (and observed capacity) are read
    frontend_address: PodAddress = pod_ip_address  # where a pod's port answers (tests map it to 127.0.0.1)


def operator_settings(options: RunOptions) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # The status schema is the operator's own: kopf keeps its bookkeeping in annotations.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=PREFIX)
    settings.persistence.finalizer = f"{PREFIX}/operator"
    settings.posting.level = logging.INFO
    if options.peering:
        settings.peering.name = options.peering
        settings.peering.mandatory = True
        settings.peering.priority = options.priority
    else:
        settings.peering.standalone = True
    settings.watching.server_timeout = 600
    settings.watching.client_timeout = 660
    return settings


def in_cluster_or_kubeconfig() -> Configuration:
    """The client configuration a pod (service account) or a workstation (kubeconfig) has."""
    from kubernetes.config.config_exception import ConfigException
    from kubernetes.config.incluster_config import load_incluster_config
    from kubernetes.config.kube_config import load_kube_config
    try:
        load_incluster_config()
    except ConfigException:
        load_kube_config()
    return Configuration.get_default_copy()


@dataclass
class Operator:
    """A started operator: kopf's root tasks and what they share."""

    context: OperatorContext
    tasks: Collection[asyncio.Task[Any]]
    preexisting: Collection[asyncio.Task[Any]]
    executor: ThreadPoolExecutor

    async def finish(self) -> None:
        """Run until kopf's root tasks end (stop flag, signal), then clean up.

        kopf cancels every task created after its start except the one running this; so
        whoever stops the operator should await this (tests do so from their teardown).
        """
        try:
            await kopf.run_tasks(self.tasks, ignored=self.preexisting)
        finally:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.context.kube.close()


async def start(options: RunOptions, configuration: Configuration, *, login: Callable[..., Any] | None = None,
                stop_flag: asyncio.Event | None = None, ready_flag: asyncio.Event | None = None) -> Operator:
    """Spawn the operator's tasks; `login` defaults to kopf's login with the client library."""
    preexisting = asyncio.all_tasks()
    registry = kopf.OperatorRegistry()
    register(registry, observe_seconds=options.observe_seconds)
    kopf.on.login(registry=registry)(login or kopf.login_via_client)
    executor = ThreadPoolExecutor(options.planner_threads, thread_name_prefix="helix-planner")
    kube = Kube(configuration)
    context = OperatorContext(kube=kube, planner=PlanRunner(executor), catalog=load_catalog(), metrics=Metrics(),
                              observer=Observer(kube, options.frontend_address, options.observe_seconds),
                              capacity=CapacityPoller(kube, options.frontend_address),
                              resync_seconds=options.resync_seconds)
    if options.metrics_port is not None:
        context.metrics.serve(options.metrics_port)
    tasks = await kopf.spawn_tasks(
        registry=registry, settings=operator_settings(options), memo=kopf.Memo(context=context),
        clusterwide=not options.namespaces, namespaces=list(options.namespaces),
        liveness_endpoint=options.liveness, stop_flag=stop_flag, ready_flag=ready_flag,
    )
    return Operator(context, tasks, preexisting, executor)


async def run(options: RunOptions, configuration: Configuration) -> None:
    """Start and run until stopped (a signal): `helix operator run`."""
    operator = await start(options, configuration)
    await operator.finish()
