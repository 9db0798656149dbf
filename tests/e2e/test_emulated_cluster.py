"""The stand-in cluster over an emulated two-region network (`LocalCluster(emulate_network=True)`):
the operator plans a pipeline across the regions, every pod runs in its node's network namespace,
a request through the Service's address returns the reference's tokens, a round trip between the
regions takes at least the configured inter-region latency both ways, and nothing of the network
outlives the cluster.

Needs root (network namespaces, veth, tc); CI machines run as root, so there it runs."""

import asyncio
import copy
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
import tritonclient.grpc as grpcclient
from e2ekit import PROMPTS, reference_outputs, triton_unary

from helix_dev.cluster import LocalCluster
from helix_dev.emulation import NodeHost, build_network, planner_cluster
from helix_dev.fleet import cpu_node, demo_manifests, device_env, gpu_node
from helix_dev.kubelet import _answers
from helix_dev.network import free_port
from helix_planner.cluster import SINK, SOURCE
from helix_planner.profiles import load_catalog
from helix_worker.errors import ServingError
from helix_worker.fleet import netns
from helix_worker.fleet.delayline import stop_relays
from helix_worker.model.random_checkpoint import DemoModel, write_demo_checkpoint

pytestmark = pytest.mark.timeout(120)
needs_root = pytest.mark.skipif(not netns.has_net_admin(), reason="network namespaces and tc need root or "
                                "CAP_NET_ADMIN (CI runs as root); test_local_cluster covers the loopback cluster")
T = TypeVar("T")
NS, NAME, MODEL = "default", "demo", "tiny-llama"
EAST, WEST = "gpu-east-0", "gpu-west-0"
INTER_LATENCY = 0.025  # seconds one way, as spec.network.interRegion says below
PROMPT, TOKENS = PROMPTS[0], 4


def manifests(checkpoint: Path) -> list[dict[str, Any]]:
    """Two simulated GPUs in two regions and a CPU node; the demo's GPUProfiles and HelixCluster, with
    its network spelled out, a short planner time limit, and weights already on disk (no init
    containers, each of which would import torch)."""
    docs = copy.deepcopy(demo_manifests())
    hxc = next(d for d in docs if d["kind"] == "HelixCluster")
    hxc["spec"]["model"]["weightsUri"] = f"file://{checkpoint}"
    hxc["spec"]["network"] = {"intraRegion": {"bandwidth": "10Gbps", "latency": "1ms"},
                              "interRegion": {"bandwidth": "100Mbps", "latency": f"{INTER_LATENCY * 1000:g}ms"},
                              "frontend": {"region": "us-east"}}
    hxc["spec"]["planner"]["timeLimitSeconds"] = 1
    nodes = [cpu_node("cpu-0", "us-east"), gpu_node(EAST, "SIM-A100", "us-east"), gpu_node(WEST, "SIM-A100", "eu-west")]
    return nodes + docs


async def until(check: Callable[[], Awaitable[T | None]], timeout: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    while not (value := await check()):
        assert time.monotonic() < deadline, f"not within {timeout:.0f}s: {what}"
        await asyncio.sleep(0.2)
    return value


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def round_trip(namespace: str, address: tuple[str, int]) -> float:
    """Seconds from sending an HTTP request to the first byte of its answer, dialled from `namespace`
    (a new connection each time; the fastest of three)."""
    times = []
    for _ in range(3):
        with netns.entered(namespace):
            sock = socket.socket()
        with sock:
            sock.settimeout(10)
            sock.connect(address)
            started = time.monotonic()
            sock.sendall(b"GET /readyz HTTP/1.0\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.")
            times.append(time.monotonic() - started)
    return min(times)


@needs_root
async def test_a_request_crosses_the_emulated_regions_with_the_reference_tokens(tmp_path: Path) -> None:
    checkpoint = tmp_path / "checkpoint"
    write_demo_checkpoint(checkpoint, DemoModel(num_layers=8))
    began = time.monotonic()
    reference = asyncio.create_task(asyncio.to_thread(reference_outputs, checkpoint, (PROMPT,), TOKENS))
    docs = manifests(checkpoint)
    hxc = next(d for d in docs if d["kind"] == "HelixCluster")
    async with LocalCluster(tmp_path / "cluster", device_env, emulate_network=True) as cluster:
        for doc in docs:
            await cluster.apply(doc)

        async def serving() -> dict[str, Any] | None:
            status = ((await cluster.get(hxc)) or {}).get("status") or {}
            rollout, active = status.get("rollout") or {}, status.get("activePlan") or {}
            workers = [p for p in await cluster.pods(NS) if "-w-" in p["metadata"]["name"]]
            ready = [p for p in workers if any(c["type"] == "Ready" and c["status"] == "True"
                                               for c in (p.get("status") or {}).get("conditions") or [])]
            done = status.get("phase") == "Running" and rollout.get("state") == "Complete"
            return status if done and rollout.get("targetHash") == active.get("hash") and \
                len(ready) == active.get("nodes") else None

        status = await until(serving, 90, "the HelixCluster is Running")
        print(f"Running after {time.monotonic() - began:.1f} s", flush=True)
        assert status["nodes"]["byRegion"] == {"us-east": 1, "eu-west": 1}, "one pipeline across both regions"
        network = cluster.network
        assert network is not None and set(network.hosts) == {"cpu-0", EAST, WEST}
        pods = {p["spec"]["nodeName"]: p for p in await cluster.pods(NS)}
        ours = netns_inode("/proc/self/ns/net")
        for node, pod in pods.items():
            run = cluster.agent_of(pod["metadata"]["name"]).find(pod["metadata"]["name"])
            inside = netns_inode(f"/proc/{run.pid}/ns/net")
            assert inside != ours and inside == netns_inode(f"/var/run/netns/{network.hosts[node].netns}"), node
        frontend = cluster.agent_of(pods["cpu-0"]["metadata"]["name"]).find(pods["cpu-0"]["metadata"]["name"])
        argv = Path(f"/proc/{frontend.pid}/cmdline").read_text().split("\0")
        west_grpc = cluster.ports.pod_port(pods[WEST], "grpc")
        assert f"--endpoint={WEST}={network.hosts[WEST].address}:{west_grpc}" in argv, "peers dial the node's address"
        east = cluster.agent_of(pods[EAST]["metadata"]["name"]).find(pods[EAST]["metadata"]["name"])
        peers = json.loads((east.dir / "volumes" / "peers" / "endpoints.json").read_text())
        assert peers[WEST] == f"{network.hosts[WEST].address}:{west_grpc}", "and so do the stages"
        expected = await reference

        def request() -> list[int] | None:
            with grpcclient.InferenceServerClient(url=cluster.service_address(NS, NAME, 8001)) as client:
                return triton_unary(client, MODEL, PROMPT, TOKENS) if client.is_server_ready() else None

        assert await until(lambda: asyncio.to_thread(request), 30, "an answer through the Service") == \
            expected.tokens[PROMPT]
        print(f"answered after {time.monotonic() - began:.1f} s", flush=True)

        west = (network.hosts[WEST].address, cluster.ports.pod_port(pods[WEST], "http"))
        across = await asyncio.to_thread(round_trip, network.hosts[EAST].netns, west)
        within = await asyncio.to_thread(round_trip, network.hosts[WEST].netns, west)
        print(f"round trip east -> west {across * 1000:.1f} ms, on the west node {within * 1000:.1f} ms", flush=True)
        assert across >= 2 * INTER_LATENCY > within
        made = {host.netns for host in network.hosts.values()} | {network.hub}
        pids = cluster.pids()
        began = time.monotonic()
    print(f"stopped in {time.monotonic() - began:.1f} s", flush=True)
    assert not made & set(netns.namespaces()), "the network's namespaces go with the cluster"
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@needs_root
async def test_the_network_has_the_planners_links_and_a_late_node_runs_no_pods(tmp_path: Path) -> None:
    docs = manifests(tmp_path / "checkpoint")
    hxc = next(d for d in docs if d["kind"] == "HelixCluster")
    nodes = [d for d in docs if d["kind"] == "Node"]
    cluster = planner_cluster(hxc, nodes, [d for d in docs if d["kind"] == "GPUProfile"], load_catalog())
    assert cluster.node_names == [EAST, WEST], "the pools' nodes: the CPU node is not the planner's"
    with build_network(cluster, [n["metadata"]["name"] for n in nodes], tmp_path / "net") as network:
        across = network.path(EAST, WEST)
        assert across is not None and (across.bandwidth, across.latency) == (100e6 / 8, INTER_LATENCY), \
            "spec.network.interRegion, as the planner reads it"
        assert network.path("cpu-0", WEST) == cluster.link(SOURCE, WEST), "the front end's node has its links"
        assert network.path(WEST, "cpu-0") == cluster.link(WEST, SINK)
        with pytest.raises(ServingError, match="gpu-late was registered after the emulated network was built"):
            NodeHost(network, "gpu-late").start_relays([8000], tmp_path)
        await probes_dial_from_the_node(NodeHost(network, EAST), tmp_path)


async def probes_dial_from_the_node(host: NodeHost, workdir: Path) -> None:
    """A pod port's portal on this machine accepts even while nothing in the pod listens; the kubelet's
    probe dials from the node's namespace, so a tcpSocket probe still tells the two apart."""
    port = free_port()
    relays = host.start_relays([port], workdir)
    assert relays is not None
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        assert not await _answers("tcpSocket", port, "/", False, host.netns)
        with netns.entered(host.netns):
            listening = socket.create_server(("127.0.0.1", port))
        with listening:
            assert await _answers("tcpSocket", port, "/", False, host.netns)
    finally:
        stop_relays(relays)


def test_without_the_privilege_the_option_says_what_to_do(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(netns, "has_net_admin", lambda: False)
    with pytest.raises(ServingError, match="--emulate-network: .*run as root.*without it every pod runs on 127.0.0.1"):
        LocalCluster(tmp_path, device_env, emulate_network=True)
