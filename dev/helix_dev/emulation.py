"""The stand-in cluster in an emulated multi-region network (`LocalCluster(emulate_network=True)`,
`helix dev cluster --emulate-network`).

Each Node becomes a host of an `EmulatedNetwork` (`helix_worker.fleet.netem`: a network namespace
per host on a bridge, an htb class per destination at its link's bandwidth, relays adding its
latency). The links are the planner's own: built with the operator's functions from the first
HelixCluster's spec.network and the nodes its pools discover (with their regions), so the planner
and the emulation see the same links; every other node (the CPU nodes, where the front end runs)
has the front end's links (the planner's SOURCE and SINK). The network is built once, when that
HelixCluster is first seen, from the Nodes registered then; it does not follow later changes to
spec.network or to regions, and a node registered later runs no pods.

A pod's containers run in its node's namespace (`ip netns exec`) and listen on 127.0.0.1 there. A
relay process per pod answers on the node's address at each of the pod's ports, holding each
direction for its path's one-way latency, and opens a portal on 127.0.0.1 of this machine at the
same port, undelayed, through which what stands outside the emulated network (the Service proxy,
the operator, clients) reaches the pod; the kubelet's probes dial from the node's namespace.
"""

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helix_operator.api.spec import parse_spec
from helix_operator.fleet.catalog import with_profiles
from helix_operator.fleet.discovery import discover, node_facts
from helix_operator.planning.inputs import build_cluster
from helix_planner.cluster import Cluster
from helix_planner.profiles import Catalog
from helix_worker.errors import ServingError
from helix_worker.fleet.delayline import start_relays
from helix_worker.fleet.netem import EmulatedNetwork, Host
from helix_worker.fleet.netns import require_net_admin


def check_privileges() -> None:
    """The one clear error where this machine cannot emulate the network."""
    try:
        require_net_admin()
    except ServingError as err:
        raise ServingError(f"--emulate-network: {err} (without it every pod runs on 127.0.0.1)") from None


def planner_cluster(helixcluster: Mapping[str, Any], nodes: Sequence[Mapping[str, Any]],
                    profiles: Sequence[Mapping[str, Any]], catalog: Catalog) -> Cluster:
    """The cluster the operator plans `helixcluster` on: the nodes its pools discover, joined by the
    links of its spec.network (`catalog`: the operator's, to which the GPUProfiles are added)."""
    spec = parse_spec(helixcluster.get("spec") or {})
    catalog = with_profiles(catalog, [(p["metadata"]["name"], p.get("spec") or {}) for p in profiles])
    discovery = discover([node_facts(node) for node in nodes], spec.pools, catalog, spec.worker.gpu_resource_name)
    return build_cluster(helixcluster["metadata"]["name"], spec, discovery)


def build_network(cluster: Cluster, nodes: Sequence[str], workdir: Path) -> EmulatedNetwork:
    """A host per node of `nodes`, with the links of `cluster` (the planner's); nodes the planner does
    not know have the front end's links. Blocking (it runs `ip` and `tc`)."""
    return EmulatedNetwork(cluster, nodes, workdir, frontends=set(nodes) - set(cluster.node_names))


@dataclass(frozen=True)
class NodeHost:
    """Where one node's pods run in the emulated network."""

    network: EmulatedNetwork
    node: str

    @property
    def netns(self) -> str | None:
        """The node's network namespace (None: the node is not in the network)."""
        host = self.network.hosts.get(self.node)
        return host.netns if host is not None else None

    def command(self, argv: Sequence[str]) -> list[str]:
        """`argv` run in the node's namespace."""
        return ["ip", "netns", "exec", self._host().netns, *argv]

    def start_relays(self, ports: Sequence[int], workdir: Path) -> subprocess.Popen[bytes] | None:
        """A pod's relay process (its files in `workdir`): `ports` on the node's address, delayed per
        peer, and on 127.0.0.1 of this machine (portals); None without ports. Blocking until they listen."""
        self._host()
        if not ports:
            return None
        relays = self.network.relays(self.node, ports) + [self.network.portal(self.node, port, port) for port in ports]
        process, _ = start_relays(relays, workdir)
        return process

    def _host(self) -> Host:
        host = self.network.hosts.get(self.node)
        if host is None:
            raise ServingError(f"node {self.node} was registered after the emulated network was built from nodes "
                               f"{', '.join(self.network.hosts)}: register every node before applying the "
                               "HelixCluster")
        return host
