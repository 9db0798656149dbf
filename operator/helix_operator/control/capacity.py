"""Reading observed capacity: the front end's `GET /v2/helix/observed`, on a timer.

Every front-end replica's heartbeat gathers the same windows from the same stages, so one
ready pod's answer is the cluster's; the first that answers is kept and the controller is
woken to judge it (`planning.capacity`). A front end that does not answer, or answers what
is no observed-capacity document, leaves the last observation in place, logs at debug level
and posts one Warning event until it answers again.
"""

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiohttp

from helix_operator.api.spec import SpecError
from helix_operator.control import events
from helix_operator.control.kube import ApiError, Kube
from helix_operator.control.observe import SCRAPE_TIMEOUT, PodAddress, frontend_ready, serving_frontends
from helix_planner.errors import PlanningError
from helix_planner.observed import PATH, Observed, parse_observed

Key = tuple[str, str]


@dataclass(frozen=True)
class Reading:
    observed: Observed
    at: str  # status time of the read
    monotonic: float


def capacity_enabled(spec: Mapping[str, Any], status: Mapping[str, Any], **_: Any) -> bool:
    """kopf `when` filter: poll only while the front end is ready and the spec asks for it."""
    planner = (spec.get("planner") or {}).get("observedCapacity") or {}
    return bool(planner.get("enabled")) and frontend_ready(status)


@dataclass
class CapacityPoller:
    kube: Kube
    address: PodAddress
    latest: dict[Key, Reading] = field(default_factory=dict)
    unreachable: set[Key] = field(default_factory=set)

    def forget(self, key: Key) -> None:
        self.latest.pop(key, None)
        self.unreachable.discard(key)

    async def poll(self, body: Mapping[str, Any], logger: logging.Logger) -> bool:
        """Read the document from a ready front-end pod; whether a new one was stored."""
        metadata = body["metadata"]
        key = (metadata["namespace"], metadata["name"])
        try:
            port, pods = await serving_frontends(self.kube, body)
        except (SpecError, ApiError) as err:
            logger.debug("cannot look for front-end pods: %s", err)
            return False
        failures: list[str] = []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=SCRAPE_TIMEOUT)) as session:
            for pod in pods:
                result = await self._read(session, pod, port)
                if isinstance(result, Observed):
                    self.latest[key] = Reading(result, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                                               time.monotonic())
                    self.unreachable.discard(key)
                    return True
                failures.append(f"{pod['metadata']['name']}: {result}")
        if failures:
            logger.debug("observed capacity unreadable: %s", "; ".join(failures))
            if key not in self.unreachable:
                self.unreachable.add(key)
                events.post(body, "ObservedCapacityUnreachable", "observed capacity is not updated until a front "
                            f"end answers {PATH}: {'; '.join(failures)[:500]}", warning=True)
        return False

    async def _read(self, session: aiohttp.ClientSession, pod: Mapping[str, Any], port: int) -> Observed | str:
        address = self.address(pod, port)
        if address is None:
            return "no address yet"
        try:
            async with session.get(f"http://{address}{PATH}") as response:
                if response.status != 200:
                    return f"HTTP {response.status}"
                document = await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as err:
            return f"{type(err).__name__}: {err}".rstrip(": ")
        try:
            return parse_observed(document)
        except PlanningError as err:
            return str(err)
