"""An emulated multi-region network for a local fleet: one namespace per host, shaped per path.

Each host (a cluster node, or the front end) gets a network namespace with one address on a
bridge in a hub namespace of the run, so hosts reach each other only through the emulation. Every
directed path gets the cluster's own link for it (the table the planner and the simulator use:
region pairs, per-link overrides and front-end links alike; the front end is SOURCE when it sends
and SINK when it receives): bandwidth by an htb class per destination on the sender's interface
(a bounded byte FIFO under it, so a full path drops packets as a congested link does, and a
disabled link drops everything); latency by the relays of `delayline` in front of each host's
ports, which hold each direction for that path's one-way latency. Processes run in a host's
namespace (`ip netns exec`, as `LocalFleet` starts them) and listen on 127.0.0.1 there; peers
dial the host's bridge address, where the relay answers. Every namespace is removed when the
network closes; those of crashed runs when the next one starts (`netns.remove_stale`).
"""

import itertools
import json
import os
import subprocess
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from helix_planner.cluster import SINK, SOURCE, Cluster, Link
from helix_worker.errors import ServingError
from helix_worker.fleet import netns
from helix_worker.fleet.delayline import Relay, start_relays, stop_relays

FRONTEND = "frontend"
SUBNET = "10.90.0."  # per run: each run has its own bridge, so runs never see each other's addresses
DEFAULT_RATE_BITS = 40_000_000_000  # traffic to no host (ARP): unshaped
QUEUE_SECONDS = 0.02  # a path's FIFO holds this much of its bandwidth (at least MIN_QUEUE_BYTES)
MIN_QUEUE_BYTES = 256 * 1024
_networks = itertools.count()


@dataclass(frozen=True)
class Host:
    name: str
    netns: str
    address: str


class EmulatedNetwork:
    """Namespaces, bridge and shaping for `hosts` (node names of `cluster`, and those in `frontends`,
    which have the front end's links), made on construction; `start_relays` adds the latency; `close`
    (or leaving the `with`) removes it all."""

    def __init__(self, cluster: Cluster, hosts: Sequence[str], workdir: Path,
                 frontends: Collection[str] = (FRONTEND,)) -> None:
        netns.require_net_admin()
        netns.remove_stale()
        self.cluster = cluster
        self.frontends = frozenset(frontends)
        self.workdir = workdir
        prefix = f"{netns.run_prefix()}{next(_networks)}-"
        self.hub = f"{prefix}hub"
        self.hosts = {name: Host(name, f"{prefix}{i}", f"{SUBNET}{i + 2}") for i, name in enumerate(hosts)}
        self._relays: subprocess.Popen[bytes] | None = None
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> "EmulatedNetwork":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def path(self, src: str, dst: str) -> Link | None:
        """The cluster's link for traffic from host `src` to host `dst` (None: disabled)."""
        return self.cluster.link(SOURCE if src in self.frontends else src, SINK if dst in self.frontends else dst)

    def relays(self, host: str, ports: Sequence[int]) -> list[Relay]:
        """Relays on `host`'s address for `ports`, delaying each peer host by its path's latency."""
        me = self.hosts[host]
        delays = {}
        for peer in self.hosts.values():
            inbound, outbound = self.path(peer.name, host), self.path(host, peer.name)
            if peer.name != host and inbound is not None and outbound is not None:
                delays[peer.address] = (inbound.latency, outbound.latency)
        return [Relay((me.address, port), ("127.0.0.1", port), me.netns, me.netns, delays) for port in ports]

    def portal(self, host: str, port: int, listen_port: int = 0) -> Relay:
        """A relay from 127.0.0.1:`listen_port` of this machine to `port` in `host`'s namespace, undelayed:
        how clients outside the emulation reach the front end."""
        return Relay(("127.0.0.1", listen_port), ("127.0.0.1", port), None, self.hosts[host].netns)

    def start_relays(self, relays: Sequence[Relay], timeout: float = 30.0) -> list[int]:
        """Run `relays` in one child process (which dies with this one); their bound ports."""
        if self._relays is not None:
            raise ServingError("this network's relays are already running")
        self._relays, ports = start_relays(relays, self.workdir, timeout)
        return ports

    def close(self) -> None:
        if self._relays is not None:
            stop_relays(self._relays)
        mine = {host.netns for host in self.hosts.values()} | {self.hub}
        netns.delete([name for name in netns.namespaces() if name in mine])

    def _build(self) -> None:
        workdir = self.workdir
        workdir.mkdir(parents=True, exist_ok=True)
        netns.sh("ip", "netns", "add", self.hub)
        netns.sh("ip", "-n", self.hub, "-batch", "-", stdin="link add br0 type bridge\nlink set br0 up\n")
        for i, host in enumerate(self.hosts.values()):
            netns.sh("ip", "netns", "add", host.netns)
            netns.sh("ip", "link", "add", "eth0", "netns", host.netns, "type", "veth", "peer", "name", f"h{i}",
                     "netns", self.hub)
            netns.sh("ip", "-n", self.hub, "link", "set", f"h{i}", "master", "br0", "up")
            netns.sh("ip", "-n", host.netns, "-batch", "-",
                     stdin=f"addr add {host.address}/24 dev eth0\nlink set eth0 up\nlink set lo up\n")
            netns.sh("tc", "-n", host.netns, "-batch", "-", stdin=self._shaping(host))
        (workdir / "network.json").write_text(json.dumps(self.describe(), indent=2))

    def _shaping(self, host: Host) -> str:
        """tc commands for `host`'s eth0: an htb class per peer at its path's bandwidth, the rest unshaped."""
        lines = ["qdisc add dev eth0 root handle 1: htb default 1",
                 f"class add dev eth0 parent 1: classid 1:1 htb rate {DEFAULT_RATE_BITS}bit"]
        for peer in self.hosts.values():
            if peer.name == host.name:
                continue
            match = f"filter add dev eth0 parent 1: protocol ip prio 1 u32 match ip dst {peer.address}/32"
            link = self.path(host.name, peer.name)
            if link is None:
                lines.append(f"{match} action drop")
                continue
            classid = self._classid(peer.name)
            queue = max(MIN_QUEUE_BYTES, int(link.bandwidth * QUEUE_SECONDS))
            lines += [f"class add dev eth0 parent 1: classid {classid} htb rate {int(link.bandwidth * 8)}bit "
                      f"quantum 65536",
                      f"qdisc add dev eth0 parent {classid} bfifo limit {queue}",
                      f"{match} flowid {classid}"]
        return "\n".join(lines) + "\n"

    def _classid(self, dst: str) -> str:
        """The htb class that shapes traffic to host `dst` on every sender."""
        return f"1:{list(self.hosts).index(dst) + 10:x}"

    def set_bandwidth(self, src: str, dst: str, bytes_per_s: float) -> None:
        """Shape the path from host `src` to host `dst` to `bytes_per_s` from now on, traffic in flight
        included (a region link losing bandwidth under load). The cluster's description stays: the
        planner learns of it only by observing."""
        if self.path(src, dst) is None:
            raise ServingError(f"the path {src} -> {dst} is disabled: there is no bandwidth to change")
        netns.sh("tc", "-n", self.hosts[src].netns, "class", "change", "dev", "eth0", "parent", "1:", "classid",
                 self._classid(dst), "htb", "rate", f"{int(bytes_per_s * 8)}bit", "quantum", "65536")

    def describe(self) -> dict[str, object]:
        """Hosts and paths as built (written to network.json in the work directory)."""
        paths = {}
        for src in self.hosts:
            for dst in self.hosts:
                link = self.path(src, dst) if src != dst else None
                if link is not None:
                    paths[f"{src} -> {dst}"] = {"bytes_per_s": link.bandwidth, "latency_s": link.latency}
        return {"hub": self.hub, "pid": os.getpid(),
                "hosts": {h.name: {"netns": h.netns, "address": h.address} for h in self.hosts.values()},
                "paths": paths}
