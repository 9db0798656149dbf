"""Start a plan's workers and front end in an emulated network (`netem`), as `helix up
--emulate-network` and bench/closed_loop.py do.

Each worker runs in its node's namespace with fixed ports (every namespace has its own), behind
relays that add its paths' latency; the front end runs in a namespace of its own whose paths are
the cluster's front-end links (its `frontend` region, as the planner and simulator see it), and is
reached from this machine through undelayed portals on 127.0.0.1 (clients stand outside the
emulated network). Two plans can run side by side, as a rollout needs: each has a color whose
ports are its own (`ColorPorts`), relays stand in front of both colors' ports, and the public
portals forward to the color being served (`entry.Portals.switch`).
"""

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from helix_planner.plan_format import Plan
from helix_worker.envs import env_name
from helix_worker.fleet.entry import Portals, entry_relays
from helix_worker.fleet.launcher import Child, LocalFleet
from helix_worker.fleet.netem import FRONTEND, EmulatedNetwork

COLORS = 2  # the plan serving and the plan rolling out


@dataclass(frozen=True)
class ColorPorts:
    """The ports, in every namespace, of one color's workers and front end."""
    worker: int
    data: int
    frontend_grpc: int
    frontend_http: int


def color_ports(color: int) -> ColorPorts:
    step = 10 * color
    return ColorPorts(50051 + step, 50052 + step, 8001 + step, 8000 + step)


@dataclass(frozen=True)
class Served:
    endpoints: dict[str, str]  # node -> the address its peers dial
    http_url: str  # the front end's, as clients reach it
    grpc_address: str
    frontend: Child
    ready_url: str  # where this machine sees the front end itself (before it is switched to)


def hosts_of(plan: Plan) -> list[str]:
    """The hosts to emulate for `plan`: its nodes and the front end."""
    return [node.name for node in plan.nodes] + [FRONTEND]


def start_relays(net: EmulatedNetwork, nodes: Sequence[str], *, grpc_port: int = 0, http_port: int = 0) -> Portals:
    """The latency relays of every node in `nodes` for every color's ports, an undelayed preview of each
    color's front end, and the public portals, which listen on `grpc_port` and `http_port` of 127.0.0.1
    (0: any free port) and forward to color 0 until switched. One set serves any plans over these nodes."""
    colors = [color_ports(color) for color in range(COLORS)]
    relays = [relay for node in nodes for ports in colors for relay in net.relays(node, (ports.worker, ports.data))]
    previews = [net.portal(FRONTEND, ports.frontend_http) for ports in colors]
    public, targets = entry_relays(net.workdir, net.hosts[FRONTEND].netns,
                                   (colors[0].frontend_grpc, colors[0].frontend_http), (grpc_port, http_port))
    bound = net.start_relays(relays + previews + public)
    grpc, http = bound[-2:]
    preview_urls = tuple(f"http://127.0.0.1:{port}" for port in bound[len(relays):len(relays) + COLORS])
    return Portals(f"127.0.0.1:{grpc}", f"http://127.0.0.1:{http}", targets, preview_urls)


def start_emulated(fleet: LocalFleet, net: EmulatedNetwork, portals: Portals, plan: Plan, plan_path: Path,
                   checkpoint: Path, node_env: dict[str, dict[str, str]], *, model_name: str = "",
                   timeout: float = 180.0, color: int = 0) -> Served:
    """Every plan node in its namespace with `node_env[node]`, and the front end, all at once (the
    addresses are fixed, so nobody waits for another to start), on `color`'s ports; `start_relays`
    ran before."""
    ports = color_ports(color)
    endpoints = {node.name: f"{net.hosts[node.name].address}:{ports.worker}" for node in plan.nodes}
    endpoints_path = fleet.workdir / "endpoints.json"
    endpoints_path.write_text(json.dumps(endpoints, indent=2))
    children = [fleet.start_worker(plan_path, node.name, checkpoint, port=ports.worker,
                                   env=node_env[node.name] | {env_name("data_port"): str(ports.data)},
                                   netns=net.hosts[node.name].netns, host=net.hosts[node.name].address)
                for node in plan.nodes]
    host = net.hosts[FRONTEND]
    frontend = fleet.start_frontend(plan_path, endpoints_path, checkpoint, model_name=model_name,
                                    grpc_port=ports.frontend_grpc, http_port=ports.frontend_http,
                                    env=node_env.get(FRONTEND), netns=host.netns, host=host.address)
    for child in children + [frontend]:
        fleet.wait(child, timeout)
    return Served(endpoints, portals.http_url, portals.grpc_address, frontend, portals.previews[color])
