"""A planner run whose inputs changed meanwhile is cancelled and its result dropped.

The planner thread is the edge replaced here: a run that never finishes on its own.
"""

import asyncio
import logging
import threading
from types import SimpleNamespace

import pytest
from opkit import fleet, fleet_spec

from helix_operator.control.controller import Controller
from helix_operator.control.inbox import NODES, SPEC
from helix_operator.fleet.discovery import node_facts
from helix_planner.profiles import load_catalog

pytestmark = pytest.mark.timeout(10)


class EndlessPlanner:
    def __init__(self) -> None:
        self.cancels: list[threading.Event] = []

    def start(self, request, cancel: threading.Event, logger) -> asyncio.Future:
        self.cancels.append(cancel)
        return asyncio.get_running_loop().create_future()


def _controller(planner: EndlessPlanner) -> tuple[Controller, dict]:
    body = {"metadata": {"name": "llama", "namespace": "ns", "uid": "u"}, "spec": fleet_spec(debounceSeconds=0)}
    nodes = {n["metadata"]["name"]: [node_facts(n)] for n in fleet(2)}
    context = SimpleNamespace(planner=planner, catalog=load_catalog())
    controller = Controller(context, body, nodes, {}, logging.getLogger("test"))
    controller.debounce = 0  # what a reconcile of this spec sets before planning
    return controller, nodes


async def test_a_node_change_that_moves_the_inputs_supersedes_the_run() -> None:
    planner = EndlessPlanner()
    controller, nodes = _controller(planner)
    solving = asyncio.ensure_future(controller._solve(None, controller._current_key()))
    await asyncio.sleep(0.05)
    controller.inbox.notify(NODES)  # nothing the planner reads has changed: keep waiting
    await asyncio.sleep(0.05)
    assert not solving.done() and not planner.cancels[0].is_set()
    del nodes["gke-a100-0"]
    controller.inbox.notify(NODES)
    assert await asyncio.wait_for(solving, 2) is None
    assert planner.cancels[0].is_set()
    assert await asyncio.wait_for(controller.inbox.wait(0), 1) == {SPEC}, "the wake-ups it saw are handed back"


async def test_a_spec_change_supersedes_the_run() -> None:
    planner = EndlessPlanner()
    controller, _ = _controller(planner)
    solving = asyncio.ensure_future(controller._solve(None, controller._current_key()))
    await asyncio.sleep(0.05)
    controller.body["spec"] = fleet_spec(debounceSeconds=0, timeLimitSeconds=7)
    controller.inbox.notify(SPEC)
    assert await asyncio.wait_for(solving, 2) is None and planner.cancels[0].is_set()
