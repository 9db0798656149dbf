"""Blue/green rollout of a new plan in `helix up`, with no failed request.

Each plan served is a generation: its workers and front end, started from scratch (a fresh
process per node; on an emulated network in the same namespaces, on the other color's ports).
Rolling out a new plan starts the next generation beside the one serving, waits until its front
end has a complete pipeline, switches the public entry to it (`entry.Portals.switch`: new
connections go to the new front end), then retires the old one: SIGTERM makes its front end
drain (requests in flight finish, gRPC clients get GOAWAY and reconnect through the entry), and
only once it has exited do its workers stop. The old plan therefore keeps serving until the new
one can, and what was started for it is gone once nothing of it is in use.
"""

import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from helix_planner.plan_format import PlannedNode
from helix_worker.envs import Settings, env_name
from helix_worker.errors import ServingError
from helix_worker.fleet.emulated import COLORS, Served, start_emulated
from helix_worker.fleet.entry import Portals
from helix_worker.fleet.launcher import LocalFleet
from helix_worker.fleet.netem import FRONTEND, EmulatedNetwork
from helix_worker.fleet.plans import FleetPlan

DRAIN_MARGIN_SECONDS = 10.0  # past the front end's own HELIX_DRAIN_SECONDS before it is killed


@dataclass(frozen=True)
class Launch:
    """What every generation of one `helix up` starts from."""
    workdir: Path
    checkpoint: Path
    model_name: str
    shared: dict[str, str]  # variables every worker and front end gets
    net: EmulatedNetwork | None
    portals: Portals | None  # the public entry; None: the front end listens on the public ports itself
    grpc_port: int = 0  # the public ports, where `portals` is None
    http_port: int = 0
    timeout: float = 180.0

    def slowdown_file(self, node: str) -> Path:
        """Where a node's slowdown can be changed while it runs (HELIX_SLOWDOWN_FILE)."""
        return self.workdir / "slowdown" / node

    def node_env(self, fleet_plan: FleetPlan) -> dict[str, dict[str, str]]:
        """Each plan node's variables, and the front end's (FRONTEND)."""
        self.slowdown_file("").mkdir(parents=True, exist_ok=True)
        return {node.name: self.shared | {env_name("slowdown"): str(fleet_plan.slowdowns[node.name]),
                                          env_name("slowdown_file"): str(self.slowdown_file(node.name))}
                for node in fleet_plan.plan.nodes} | {FRONTEND: self.shared}


@dataclass(frozen=True)
class Generation:
    number: int
    fleet_plan: FleetPlan
    fleet: LocalFleet
    served: Served
    plan_path: Path


def wait_ready(http_url: str, fleet: LocalFleet, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(http_url + "/readyz", timeout=2):
                return
        except OSError:
            time.sleep(0.2)
    raise ServingError(f"the front end had no complete pipeline after {timeout:.0f}s; logs are in {fleet.workdir}")


def start_generation(launch: Launch, number: int, fleet_plan: FleetPlan) -> Generation:
    """Start `fleet_plan`'s workers and front end and wait until it serves (the entry is not switched)."""
    plan = fleet_plan.plan
    plan_path = launch.workdir / ("plan.json" if number == 0 else f"plan-{number}.json")
    plan_path.write_text(plan.to_json())
    logs = launch.workdir / "logs"
    fleet = LocalFleet(logs if number == 0 else logs / f"replan-{number}")
    try:
        node_env = launch.node_env(fleet_plan)
        if launch.net is not None and launch.portals is not None:
            served = start_emulated(fleet, launch.net, launch.portals, plan, plan_path, launch.checkpoint, node_env,
                                    model_name=launch.model_name, timeout=launch.timeout, color=number % COLORS)
        else:
            served = start_loopback(fleet, plan_path, plan.nodes, launch, node_env)
        wait_ready(served.ready_url, fleet, launch.timeout)
    except BaseException:
        fleet.stop()
        raise
    return Generation(number, fleet_plan, fleet, served, plan_path)


def start_loopback(fleet: LocalFleet, plan_path: Path, nodes: Sequence[PlannedNode], launch: Launch,
                   node_env: dict[str, dict[str, str]]) -> Served:
    """Every plan node, then the front end, on 127.0.0.1 of this machine: on any free ports behind the
    entry, else on the public ports."""
    children = [fleet.start_worker(plan_path, n.name, launch.checkpoint, env=node_env[n.name]) for n in nodes]
    endpoints = {c.name: fleet.wait(c, launch.timeout).grpc_address for c in children}
    endpoints_path = fleet.workdir / "endpoints.json"
    endpoints_path.write_text(json.dumps(endpoints, indent=2))
    public = launch.portals is None
    frontend = fleet.wait(fleet.start_frontend(plan_path, endpoints_path, launch.checkpoint,
                                               model_name=launch.model_name,
                                               grpc_port=launch.grpc_port if public else 0,
                                               http_port=launch.http_port if public else 0,
                                               env=node_env[FRONTEND]),
                          launch.timeout)
    if launch.portals is None:
        return Served(endpoints, frontend.http_url, frontend.grpc_address, frontend, frontend.http_url)
    return Served(endpoints, launch.portals.http_url, launch.portals.grpc_address, frontend, frontend.http_url)


def switch(launch: Launch, generation: Generation) -> None:
    """Send new connections to `generation`'s front end."""
    if launch.portals is not None:
        ports = generation.served.frontend.ports
        launch.portals.switch(ports["grpc"], ports["http"])


def retire(generation: Generation, drain_seconds: float) -> None:
    """Let the front end finish the requests it has (SIGTERM: it drains and exits), then stop its workers."""
    process = generation.served.frontend.process
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=drain_seconds + DRAIN_MARGIN_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    generation.fleet.stop()


def roll_out(launch: Launch, serving: Generation, fleet_plan: FleetPlan,
             out: Callable[[str], None] = print) -> Generation:
    """Serve `fleet_plan` instead of `serving`'s plan; the new generation."""
    if launch.portals is None:
        raise ServingError("a rollout needs the public entry in front of the front end")
    began = time.monotonic()
    new = start_generation(launch, serving.number + 1, fleet_plan)
    try:
        switch(launch, new)
        started = time.monotonic() - began
        out(f"plan {new.fleet_plan.plan.plan_hash} serves (up in {started:.1f}s); draining plan "
            f"{serving.fleet_plan.plan.plan_hash}")
        retire(serving, Settings.from_env(os.environ | launch.shared).drain_seconds)
    except BaseException:  # stopped midway (Ctrl-C): the caller stops `serving`, this stops the new one
        new.fleet.stop()
        raise
    out(f"rolled out plan {new.fleet_plan.plan.plan_hash} in {time.monotonic() - began:.1f}s; the old plan's "
        "processes are stopped")
    return new
