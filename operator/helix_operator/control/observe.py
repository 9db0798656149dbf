"""Observed throughput: generated tokens/s, read from the front end's token counter.

Each ready front-end pod is scraped (`/metrics` on its HTTP port), not the Service: a Service
sends each connection to one replica, and a new pod's counter (rolling update, restart)
starts again from zero, so deltas between scrapes that reached different pods would mean
nothing. A pod's rate is its counter's increase over the time between two of its scrapes;
the cluster's figure, the sum over its pods, goes into the status only when every ready pod
answered and has a rate. An unreachable front end leaves the last figure (and its time) in
place, logs at debug level and posts one Warning event until it answers again.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from helix_operator.api import names
from helix_operator.api.meta import condition_true, selector
from helix_operator.api.spec import SpecError, parse_spec
from helix_operator.control import events
from helix_operator.control.kube import ApiError, Kube, Ref

COUNTER = "vllm:generation_tokens"  # the front end's counter of sampled tokens (helix_worker.metrics)
SCRAPE_TIMEOUT = 5.0
STALE_INTERVALS = 3  # a pod's sample older than this many intervals only starts a new baseline

Key = tuple[str, str]
PodAddress = Callable[[Mapping[str, Any], int], str | None]  # (pod, container port) -> "host:port"


def pod_ip_address(pod: Mapping[str, Any], port: int) -> str | None:
    """Where a pod's port answers in a cluster: its pod IP."""
    ip = (pod.get("status") or {}).get("podIP")
    if not ip:
        return None
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


def frontend_ready(status: Mapping[str, Any], **_: Any) -> bool:
    """kopf `when` filter: the observation timer runs only while the front end is ready."""
    return condition_true(status, "FrontendReady")


@dataclass(frozen=True)
class Sample:
    tokens: float
    at: float  # time.monotonic()


def counter_value(text: str, family: str = COUNTER) -> float | None:
    """The counter's total in Prometheus text exposition (summed over label sets), None if absent."""
    for metric in text_string_to_metric_families(text):
        if metric.name == family:
            return sum(s.value for s in metric.samples if s.name == f"{family}_total")
    return None


def rate(previous: Sample | None, current: Sample, max_age: float) -> float | None:
    """Tokens/s between two scrapes of one pod; None for a first, stale or reset (restarted) sample."""
    if previous is None or current.tokens < previous.tokens:
        return None
    elapsed = current.at - previous.at
    if not 0 < elapsed <= max_age:
        return None
    return (current.tokens - previous.tokens) / elapsed


@dataclass
class Observer:
    """The last sample of every front-end pod, per HelixCluster, kept between timer runs."""

    kube: Kube
    address: PodAddress
    interval: float
    samples: dict[Key, dict[str, Sample]] = field(default_factory=dict)  # pod uid -> its last sample
    unreachable: set[Key] = field(default_factory=set)

    def forget(self, key: Key) -> None:
        """A deleted HelixCluster's samples go with it."""
        self.samples.pop(key, None)
        self.unreachable.discard(key)

    async def observe(self, body: Mapping[str, Any], logger: logging.Logger) -> None:
        """Scrape every ready front-end pod once and publish the sum of their rates when complete."""
        metadata = body["metadata"]
        key = (metadata["namespace"], metadata["name"])
        try:
            port, pods = await serving_frontends(self.kube, body)
        except (SpecError, ApiError) as err:
            logger.debug("cannot list front-end pods: %s", err)
            return
        if not pods:
            return
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)) as session:
            scraped = await asyncio.gather(*(self._scrape(session, pod, port) for pod in pods))
        previous = self.samples.get(key, {})
        fresh = {uid: result for uid, result in scraped if isinstance(result, Sample)}
        failures = [f"{pod['metadata']['name']}: {result}" for pod, (_, result) in zip(pods, scraped)
                    if not isinstance(result, Sample)]
        listed = {uid for uid, _ in scraped}  # pods that are gone drop out; a failed one keeps its last sample
        self.samples[key] = {**{uid: s for uid, s in previous.items() if uid in listed}, **fresh}
        if failures:
            logger.debug("front-end metrics unreachable: %s", "; ".join(failures))
            if key not in self.unreachable:
                self.unreachable.add(key)
                events.post(body, "FrontendMetricsUnreachable", "observedTokensPerSecond is not updated until the "
                            f"front end answers: {'; '.join(failures)[:500]}", warning=True)
            return
        if key in self.unreachable:
            self.unreachable.discard(key)
            logger.debug("front-end metrics answer again")
        maybe = [rate(previous.get(uid), sample, STALE_INTERVALS * self.interval) for uid, sample in fresh.items()]
        rates = [r for r in maybe if r is not None]
        if len(rates) < len(maybe):
            return  # a pod seen for the first time (or restarted): its figure comes with the next scrape
        now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        status = {"observedTokensPerSecond": round(sum(rates), 1), "observedAt": now}
        try:
            await self.kube.patch(Ref(names.API_VERSION, names.HELIXCLUSTERS, *key), {"status": status},
                                  subresource="status")
        except ApiError as err:  # deleted meanwhile, or an API hiccup: the next run tries again
            logger.debug("cannot write the observed throughput: %s", err)

    async def _scrape(self, session: aiohttp.ClientSession, pod: Mapping[str, Any],
                      port: int) -> tuple[str, Sample | str]:
        """(pod uid, its sample or why there is none)."""
        uid = pod["metadata"]["uid"]
        address = self.address(pod, port)
        if address is None:
            return uid, "no address yet"
        try:
            async with session.get(f"http://{address}/metrics") as response:
                if response.status != 200:
                    return uid, f"HTTP {response.status}"
                text = await response.text()
        except (TimeoutError, aiohttp.ClientError, OSError) as err:
            return uid, f"{type(err).__name__}: {err}".rstrip(": ")
        value = counter_value(text)
        if value is None:
            return uid, f"no {COUNTER} counter at /metrics"
        return uid, Sample(value, time.monotonic())


async def serving_frontends(kube: Kube, body: Mapping[str, Any]) -> tuple[int, list[Mapping[str, Any]]]:
    """The front end's HTTP port and its pods that are ready and not terminating (those clients
    reach through the Service); SpecError for a spec without one, ApiError if the pods cannot be listed."""
    metadata = body["metadata"]
    port = parse_spec(body.get("spec") or {}).frontend.http_port
    pods = await kube.list_objects(Ref("v1", "pods", metadata["namespace"]),
                                   selector(metadata["name"], names.COMPONENT_FRONTEND))
    return port, [p for p in pods if not (p.get("metadata") or {}).get("deletionTimestamp")
                  and condition_true(p.get("status"), "Ready")]
