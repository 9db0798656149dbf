"""The controller's inbox: immediate wake-ups, debounced node changes, deadlines."""

import asyncio
import time

import pytest

from helix_operator.control.context import Inboxes
from helix_operator.control.inbox import NODES, PODS, SPEC, TIMER, Inbox

pytestmark = pytest.mark.timeout(10)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_spec_and_pods_wake_at_once_together() -> None:
    inbox = Inbox()
    inbox.notify(SPEC)
    inbox.notify(PODS)
    assert await asyncio.wait_for(inbox.wait(debounce=60), 1) == {SPEC, PODS}


async def test_node_changes_wait_for_quiet() -> None:
    clock = Clock()
    inbox = Inbox(clock)
    inbox.notify(NODES)
    waiter = asyncio.ensure_future(inbox.wait(debounce=5))
    await asyncio.sleep(0.05)
    clock.now += 3
    inbox.notify(NODES)  # a second change restarts the quiet period
    await asyncio.sleep(0.05)
    clock.now += 3
    inbox.notify(SPEC)
    assert await asyncio.wait_for(waiter, 1) == {SPEC}, "the node change is not due yet"
    clock.now += 2.5
    assert await asyncio.wait_for(inbox.wait(debounce=5), 1) == {NODES}


async def test_ignored_kinds_stay_pending_and_deadlines_fire() -> None:
    inbox = Inbox()
    inbox.notify(PODS)
    assert await inbox.wait(debounce=0, deadline=time.monotonic() - 1, ignore=frozenset({PODS})) == {TIMER}
    assert await asyncio.wait_for(inbox.wait(debounce=0), 1) == {PODS}


async def test_front_end_pods_wake_their_cluster_by_label() -> None:
    """Front-end pods are owned by a ReplicaSet, so their cluster is found by its label."""
    inboxes, ours, other = Inboxes(), Inbox(), Inbox()
    inboxes.by_key |= {("ns", "llama"): ours, ("other", "llama"): other}
    inboxes.notify_labelled("ns", "llama", PODS)
    assert await asyncio.wait_for(ours.wait(debounce=0), 1) == {PODS}
    assert await other.wait(debounce=0, deadline=time.monotonic() - 1) == {TIMER}
