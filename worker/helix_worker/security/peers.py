"""The next hops a stage may dial: the endpoints of its plan's nodes, nothing else.

A route arrives with each request, naming every hop's node and address; a stage that dialled
whatever it was told could be made to open streams to any server (SSRF). So a hop is dialled
only when its node is in the stage's plan and its address is that node's endpoint as given
to the worker (`--endpoint` pairs and `--endpoints` files). The files are read again when a
hop is not found, so that a launcher can write them once the stages have bound their ports.
"""

import json
from collections.abc import Iterable
from pathlib import Path

from helix_worker.errors import ServingError


class PlanPeers:
    def __init__(self, plan_nodes: Iterable[str] = (), endpoints: dict[str, str] | None = None,
                 files: Iterable[Path] = ()) -> None:
        """No nodes: the stage dials no next hop at all (a lone or last stage)."""
        self.plan_nodes = frozenset(plan_nodes)
        self._given = dict(endpoints or {})
        self._files = tuple(files)
        self._endpoints = self._load()

    def _load(self) -> dict[str, str]:
        endpoints: dict[str, str] = {}
        for path in self._files:
            try:
                endpoints |= {str(k): str(v) for k, v in json.loads(path.read_text()).items()}
            except FileNotFoundError:
                continue  # not written yet
            except (OSError, ValueError, AttributeError) as err:
                raise ServingError(f"cannot read endpoints file {path}: {err}") from None
        return endpoints | self._given

    def check(self, node: str, address: str) -> None:
        """Raise ServingError, saying why, unless `address` is plan node `node`'s endpoint."""
        if node not in self.plan_nodes:
            raise ServingError(f"next hop {node!r} ({address}) is not a node of this stage's plan; not dialled")
        if self._endpoints.get(node) != address and self._files:
            self._endpoints = self._load()
        if self._endpoints.get(node) != address:
            known = self._endpoints.get(node)
            raise ServingError(f"next hop {node!r} at {address} is not that node's endpoint in this stage's plan "
                               f"({known or 'none given'}); not dialled")


def parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """NODE=HOST:PORT pairs as a mapping."""
    endpoints: dict[str, str] = {}
    for pair in pairs:
        node, sep, address = pair.partition("=")
        if not sep or not node or ":" not in address:
            raise ServingError(f"endpoint {pair!r} should look like NODE=HOST:PORT")
        endpoints[node] = address
    return endpoints
