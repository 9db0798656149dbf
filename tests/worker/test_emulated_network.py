"""The emulated multi-region network is real: shaped bandwidth, added latency, namespaces that
never outlive their run, and a served request across regions with the reference's tokens.

These need root (network namespaces, veth, tc); CI machines run as root, so there they run."""

import json
import signal
import socket
import statistics
import subprocess
import sys
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from dataplane_helpers import NUM_LAYERS, WORKER_ENV, wait_http_ready, write_plan

from helix_planner.cluster import Cluster, Node
from helix_planner.network import LinkSpec, NetworkModel, build_cluster
from helix_worker.engine.reference import ReferenceModel
from helix_worker.errors import ServingError
from helix_worker.fleet import netns
from helix_worker.fleet.emulated import hosts_of, start_emulated, start_relays
from helix_worker.fleet.launcher import LocalFleet
from helix_worker.fleet.netem import FRONTEND, EmulatedNetwork
from helix_worker.model.tokenizer import load_tokenizer

needs_root = pytest.mark.skipif(not netns.has_net_admin(), reason="network namespaces and tc need root or "
                                "CAP_NET_ADMIN (CI runs as root); the loopback fleet's tests cover the rest")

INTRA = LinkSpec(bandwidth=50e6, latency=0.0005)
INTER = LinkSpec(bandwidth=1.5e6, latency=0.02)  # 12 Mbit/s, 20 ms one way


def two_regions() -> Cluster:
    nodes = [Node("east-0", "CPU", "east"), Node("east-1", "CPU", "east"), Node("west-0", "CPU", "west")]
    return build_cluster(nodes, NetworkModel(intra=INTRA, inter=INTER, frontend_region="east"), name="two-regions")


@pytest.fixture
def net(tmp_path: Path) -> Iterator[EmulatedNetwork]:
    with EmulatedNetwork(two_regions(), ["east-0", "east-1", "west-0", FRONTEND], tmp_path / "net") as network:
        yield network


def listen(net: EmulatedNetwork, host: str, address: str, port: int) -> socket.socket:
    with netns.entered(net.hosts[host].netns):
        return socket.create_server((address, port))


def dial(net: EmulatedNetwork, src: str, dst: str, port: int) -> socket.socket:
    with netns.entered(net.hosts[src].netns):
        sock = socket.socket()
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.connect((net.hosts[dst].address, port))
    return sock


def throughput(net: EmulatedNetwork, src: str, dst: str, seconds: float, *, behind_relay: bool = False) -> float:
    """Bytes/s a bulk TCP transfer gets from `src` to `dst`, until the last byte is received (by a server
    on `dst`'s address, or on its 127.0.0.1 behind a relay on port 9000)."""
    server, received = listen(net, dst, "127.0.0.1" if behind_relay else net.hosts[dst].address, 9000), [0]

    def drain() -> None:
        conn, _ = server.accept()
        while data := conn.recv(1 << 16):
            received[0] += len(data)
        conn.close()

    reader = threading.Thread(target=drain)
    reader.start()
    sock, chunk = dial(net, src, dst, 9000), b"x" * (1 << 16)
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        sock.sendall(chunk)
    sock.close()
    reader.join()
    server.close()
    return received[0] / (time.monotonic() - started)


@needs_root
def test_paths_are_shaped_to_the_cluster_links(net: EmulatedNetwork) -> None:
    across = throughput(net, "east-0", "west-0", 1.5)
    within = throughput(net, "east-0", "east-1", 0.5)
    assert across == pytest.approx(INTER.bandwidth, rel=0.25)
    assert within > 8 * across  # 50 MB/s configured; less on a loaded CI machine, still far above 1.5


@needs_root
def test_a_paths_bandwidth_can_be_cut_while_the_network_runs(net: EmulatedNetwork) -> None:
    net.set_bandwidth("east-0", "west-0", INTER.bandwidth / 2)
    assert throughput(net, "east-0", "west-0", 1.5) == pytest.approx(INTER.bandwidth / 2, rel=0.25)
    assert throughput(net, "east-1", "west-0", 1.0) == pytest.approx(INTER.bandwidth, rel=0.25)  # only that path


@needs_root
def test_relays_keep_the_paths_bandwidth(net: EmulatedNetwork) -> None:
    net.start_relays(net.relays("west-0", [9000]))
    assert throughput(net, "east-0", "west-0", 1.5, behind_relay=True) == pytest.approx(INTER.bandwidth, rel=0.25)


@needs_root
def test_relays_add_each_paths_latency_both_ways(net: EmulatedNetwork) -> None:
    net.start_relays(net.relays("west-0", [9100]) + net.relays("east-1", [9100]))
    for host in ("west-0", "east-1"):
        echo = listen(net, host, "127.0.0.1", 9100)
        threading.Thread(target=_echo, args=(echo,), daemon=True).start()
    across, within = _rtt(dial(net, "east-0", "west-0", 9100)), _rtt(dial(net, "east-0", "east-1", 9100))
    assert across - within == pytest.approx(2 * (INTER.latency - INTRA.latency), rel=0.3)  # one-way latency, twice
    assert within < 0.02


def _echo(server: socket.socket) -> None:
    conn, _ = server.accept()
    while data := conn.recv(4096):
        conn.sendall(data)


def _rtt(sock: socket.socket, rounds: int = 9) -> float:
    times = []
    for _ in range(rounds):
        started = time.monotonic()
        sock.sendall(b"ping")
        assert sock.recv(16) == b"ping"
        times.append(time.monotonic() - started)
    sock.close()
    return statistics.median(times)


@needs_root
def test_namespaces_go_with_the_network(tmp_path: Path) -> None:
    with EmulatedNetwork(two_regions(), ["east-0", FRONTEND], tmp_path / "net") as network:
        made = {host.netns for host in network.hosts.values()} | {network.hub}
        assert made <= set(netns.namespaces())
    assert not made & set(netns.namespaces())


CRASHING_RUN = """
import sys, time
from pathlib import Path
from helix_planner.cluster import Node
from helix_planner.network import build_cluster, NetworkModel
from helix_worker.fleet.netem import EmulatedNetwork
net = EmulatedNetwork(build_cluster([Node("a", "CPU", "east"), Node("b", "CPU", "west")], NetworkModel()), ["a", "b"],
                      Path(sys.argv[1]))
net.start_relays(net.relays("b", [9100]))
time.sleep(600)
"""


@needs_root
def test_a_crashed_runs_namespaces_and_relays_are_removed_by_the_next(tmp_path: Path) -> None:
    run = subprocess.Popen([sys.executable, "-c", textwrap.dedent(CRASHING_RUN), str(tmp_path)])
    try:
        deadline = time.monotonic() + 20
        while not (tmp_path / "relays.ready.json").exists():
            assert run.poll() is None and time.monotonic() < deadline, "the run did not come up"
            time.sleep(0.05)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    left = {h["netns"] for h in json.loads((tmp_path / "network.json").read_text())["hosts"].values()}
    assert left <= set(netns.namespaces())  # a crash leaves them behind ...
    assert left <= set(netns.remove_stale())  # ... until the next run starts
    assert not left & set(netns.namespaces())
    relays = json.loads((tmp_path / "relays.ready.json").read_text())["pid"]
    deadline = time.monotonic() + 5
    while _running(relays) and time.monotonic() < deadline:  # they die with their launcher
        time.sleep(0.05)
    assert not _running(relays)


def _running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


@needs_root
def test_a_request_crosses_regions_with_the_reference_tokens(tmp_path: Path, checkpoint: Path) -> None:
    plan, plan_path = write_plan(tmp_path, [[("east-0", 0, 3), ("west-0", 3, NUM_LAYERS)]])
    with EmulatedNetwork(two_regions(), hosts_of(plan), tmp_path / "net") as network, \
            LocalFleet(tmp_path / "fleet", env=WORKER_ENV) as fleet:
        portals = start_relays(network, [n.name for n in plan.nodes])
        served = start_emulated(fleet, network, portals, plan, plan_path, checkpoint, {n.name: {} for n in plan.nodes},
                                timeout=60)
        assert served.endpoints == {"east-0": "10.90.0.2:50051", "west-0": "10.90.0.3:50051"}
        wait_http_ready(served.http_url)
        prompt = [1, 5, 9, 14]
        body = {"prompt": prompt, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
        request = urllib.request.Request(served.http_url + "/v1/completions", json.dumps(body).encode(),
                                         {"Content-Type": "application/json"})
        started = time.monotonic()
        with urllib.request.urlopen(request, timeout=60) as response:
            text = json.loads(response.read())["choices"][0]["text"]
        elapsed = time.monotonic() - started
    expected = ReferenceModel(checkpoint).greedy(prompt, 6).tokens
    assert text == load_tokenizer(checkpoint).decode(expected)
    assert elapsed > 6 * 2 * INTER.latency  # every step crossed east -> west -> east (front end in east)


def test_running_without_the_privilege_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns, "has_net_admin", lambda: False)
    with pytest.raises(ServingError, match="run as root or use the loopback fleet"):
        netns.require_net_admin()
