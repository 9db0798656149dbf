"""The next hops a stage may dial: its plan's nodes at their endpoints, nothing else.

A route arrives with each request, naming every hop's node and address; a stage that dialled
whatever it was told could be made to open streams to any server (SSRF). So a hop is dialled
only when its node is allowed and its address is that node's endpoint as given to the worker.

Two ways to say what is allowed:
* the plan's nodes, at the endpoints of `--endpoint` pairs and `--endpoints` files (read again
  when a hop is not found, so that a launcher can write them once the stages bound their ports);
* a peer list (`--peers FILE`, a JSON object of node -> HOST:PORT), which alone decides and is
  read again whenever it changes. The operator keeps one per cluster, listing the nodes of
  every plan a front end may still route over, in a ConfigMap mounted into each worker: a
  worker kept across a replan (same node, same layers) then forwards to the nodes of the new
  plan without a restart, and stops accepting a node once no plan in service has it.
"""

import json
from collections.abc import Iterable
from pathlib import Path

from helix_worker.errors import ServingError
from helix_worker.security.reloading import Reloading


def read_endpoints(path: Path) -> dict[str, str]:
    """A JSON object mapping node names to HOST:PORT; raises OSError or ValueError."""
    document = json.loads(path.read_text())
    if not isinstance(document, dict):
        raise ValueError("not a JSON object of node names to HOST:PORT")
    return {str(node): str(address) for node, address in document.items()}


class PlanPeers:
    def __init__(self, plan_nodes: Iterable[str] = (), endpoints: dict[str, str] | None = None,
                 files: Iterable[Path] = (), *, peer_list: Path | None = None) -> None:
        """No nodes and no `peer_list`: the stage dials no next hop at all (a lone or last stage).
        With `peer_list`, that file alone says which nodes may be dialled, and where."""
        self.plan_nodes = frozenset(plan_nodes)
        self._given = dict(endpoints or {})
        self._files = tuple(files)
        self._endpoints = self._load()
        self._list: Reloading[dict[str, str]] | None = None
        if peer_list is not None:
            self._list = Reloading((peer_list,), lambda: read_endpoints(peer_list), "the peer list")
            try:
                self._list.current()
            except (OSError, ValueError) as err:
                raise ServingError(f"cannot read the peer list {peer_list}: {err}") from None

    def _load(self) -> dict[str, str]:
        endpoints: dict[str, str] = {}
        for path in self._files:
            try:
                endpoints |= read_endpoints(path)
            except FileNotFoundError:
                continue  # not written yet
            except (OSError, ValueError) as err:
                raise ServingError(f"cannot read endpoints file {path}: {err}") from None
        return endpoints | self._given

    def problem(self, node: str, address: str) -> str | None:
        """Why the stage would not dial `node` at `address`; None when it would."""
        if self._list is not None:
            allowed, where = self._list.current(), f"this stage's peer list ({self._list.paths[0]})"
            if node not in allowed:
                return f"next hop {node!r} ({address}) is not in {where}; not dialled"
        else:
            allowed, where = self._endpoints, "this stage's plan"
            if node not in self.plan_nodes:
                return f"next hop {node!r} ({address}) is not a node of {where}; not dialled"
            if allowed.get(node) != address and self._files:
                try:
                    self._endpoints = allowed = self._load()
                except ServingError as err:
                    return f"next hop {node!r} not dialled: {err}"
        if allowed.get(node) != address:
            return (f"next hop {node!r} at {address} is not that node's endpoint in {where} "
                    f"({allowed.get(node) or 'none given'}); not dialled")
        return None


def parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """NODE=HOST:PORT pairs as a mapping."""
    endpoints: dict[str, str] = {}
    for pair in pairs:
        node, sep, address = pair.partition("=")
        if not sep or not node or ":" not in address:
            raise ServingError(f"endpoint {pair!r} should look like NODE=HOST:PORT")
        endpoints[node] = address
    return endpoints
