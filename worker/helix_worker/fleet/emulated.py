"""Start a plan's workers and front end in an emulated network (`netem`), as `helix up
--emulate-network` and bench/closed_loop.py do.

Each worker runs in its node's namespace with fixed ports (every namespace has its own), behind
relays that add its paths' latency; the front end runs in a namespace of its own whose paths are
the cluster's front-end links (its `frontend` region, as the planner and simulator see it), and is
reached from this machine through undelayed portals on 127.0.0.1 (clients stand outside the
emulated network).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from helix_planner.plan_format import Plan
from helix_worker.envs import env_name
from helix_worker.fleet.launcher import LocalFleet
from helix_worker.fleet.netem import FRONTEND, EmulatedNetwork

WORKER_PORT, DATA_PORT = 50051, 50052
FRONTEND_GRPC_PORT, FRONTEND_HTTP_PORT = 8001, 8000


@dataclass(frozen=True)
class Portals:
    """Where this machine reaches the emulated front end."""
    grpc_address: str
    http_url: str


@dataclass(frozen=True)
class Served:
    endpoints: dict[str, str]  # node -> the address its peers dial
    http_url: str  # the front end's, as reachable from this machine
    grpc_address: str


def hosts_of(plan: Plan) -> list[str]:
    """The hosts to emulate for `plan`: its nodes and the front end."""
    return [node.name for node in plan.nodes] + [FRONTEND]


def start_relays(net: EmulatedNetwork, nodes: Sequence[str], *, grpc_port: int = 0, http_port: int = 0) -> Portals:
    """The latency relays of every node in `nodes` and the front end's portals, which listen on `grpc_port`
    and `http_port` of 127.0.0.1 (0: any free port). One set serves any plan over these nodes."""
    relays = [relay for node in nodes for relay in net.relays(node, (WORKER_PORT, DATA_PORT))]
    portals = [net.portal(FRONTEND, FRONTEND_GRPC_PORT, grpc_port), net.portal(FRONTEND, FRONTEND_HTTP_PORT, http_port)]
    grpc, http = net.start_relays(relays + portals)[-2:]
    return Portals(f"127.0.0.1:{grpc}", f"http://127.0.0.1:{http}")


def start_emulated(fleet: LocalFleet, net: EmulatedNetwork, portals: Portals, plan: Plan, plan_path: Path,
                   checkpoint: Path, node_env: dict[str, dict[str, str]], *, model_name: str = "",
                   timeout: float = 180.0) -> Served:
    """Every plan node in its namespace with `node_env[node]`, and the front end, all at once (the
    addresses are fixed, so nobody waits for another to start); `start_relays` ran before."""
    endpoints = {node.name: f"{net.hosts[node.name].address}:{WORKER_PORT}" for node in plan.nodes}
    endpoints_path = fleet.workdir / "endpoints.json"
    endpoints_path.write_text(json.dumps(endpoints, indent=2))
    children = [fleet.start_worker(plan_path, node.name, checkpoint, port=WORKER_PORT,
                                   env=node_env[node.name] | {env_name("data_port"): str(DATA_PORT)},
                                   netns=net.hosts[node.name].netns, host=net.hosts[node.name].address)
                for node in plan.nodes]
    frontend = net.hosts[FRONTEND]
    children.append(fleet.start_frontend(plan_path, endpoints_path, checkpoint, model_name=model_name,
                                         grpc_port=FRONTEND_GRPC_PORT, http_port=FRONTEND_HTTP_PORT,
                                         env=node_env.get(FRONTEND), netns=frontend.netns, host=frontend.address))
    for child in children:
        fleet.wait(child, timeout)
    return Served(endpoints, portals.http_url, portals.grpc_address)
