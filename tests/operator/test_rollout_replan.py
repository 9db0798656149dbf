"""Rollout steps (surge, switch, drain) and the replan policy."""

from helix_planner.profiles import load_catalog

from helix_operator.discovery import discover, node_facts
from helix_operator.inputs import InputsKey
from helix_operator.replan import broken_nodes, decide, replan_due
from helix_operator.rollout import COMPLETE, DRAINING, SURGING, SWITCHING, PodView, next_step
from helix_operator.spec import parse_spec
from helix_operator.workers import Assignment
from opkit import fleet, fleet_spec


def _pods(*specs) -> list[PodView]:
    """specs: (node, start, end, hash, ready[, deleting])."""
    return [PodView(f"p-{n}-{s}-{e}", (n, s, e), h, r, bool(rest and rest[0]), False)
            for n, s, e, h, r, *rest in specs]


NEW = [Assignment("a", 0, 40), Assignment("b", 40, 80), Assignment("c", 0, 80)]


def test_first_rollout_starts_everything_at_once() -> None:
    step = next_step(NEW, [], "h2", max_surge=None)
    assert [a.node for a in step.create] == ["a", "b", "c"] and step.state == SURGING and not step.switch_frontend


def test_surge_is_limited_while_an_old_plan_serves() -> None:
    old = _pods(("x", 0, 80, "h1", True))
    step = next_step(NEW, old, "h2", max_surge=2)
    assert [a.node for a in step.create] == ["a", "b"] and step.delete == ()
    step = next_step(NEW, old + _pods(("a", 0, 40, "h2", False), ("b", 40, 80, "h2", True)), "h2", max_surge=2)
    assert [a.node for a in step.create] == ["c"]


def test_switch_then_drain_then_complete() -> None:
    old = _pods(("x", 0, 80, "h1", True), ("a", 0, 80, "h1", True))
    new = _pods(("b", 40, 80, "h2", True), ("c", 0, 80, "h2", True))
    step = next_step(NEW, old + new, "h2", max_surge=8)
    assert step.switch_frontend and step.state == DRAINING
    assert sorted(step.delete) == ["p-a-0-80", "p-x-0-80"]
    assert [a.key for a in step.create] == [("a", 0, 40)], "the replacement waits for node a to drain"
    draining = _pods(("a", 0, 80, "h1", True, True)) + new + _pods(("a", 0, 40, "h2", False))
    assert next_step(NEW, draining, "h2", max_surge=8).state == DRAINING
    done = next_step(NEW, new + _pods(("a", 0, 40, "h2", True)), "h2", max_surge=8)
    assert done.state == COMPLETE and done.create == () and done.delete == () and done.ready == 3


def test_obsolete_pods_stay_until_no_front_end_of_an_older_plan_is_left() -> None:
    """Old front-end pods finish their requests on the old pipelines before those go."""
    old = _pods(("x", 0, 80, "h1", True), ("a", 0, 80, "h1", True))
    new = _pods(("b", 40, 80, "h2", True), ("c", 0, 80, "h2", True))
    step = next_step(NEW, old + new, "h2", max_surge=8, frontend_current=False)
    assert step.switch_frontend and step.state == SWITCHING
    assert step.delete == () and step.create == (), "no obsolete pod deleted, no replacement started yet"
    failed = [PodView("p-dead", ("b", 40, 80), "h2", False, False, True)]
    assert next_step(NEW, old + new + failed, "h2", max_surge=8, frontend_current=False).delete == ("p-dead",)
    step = next_step(NEW, old + new, "h2", max_surge=8, frontend_current=True)
    assert step.state == DRAINING and sorted(step.delete) == ["p-a-0-80", "p-x-0-80"]
    done = next_step(NEW, new + _pods(("a", 0, 40, "h2", True)), "h2", max_surge=8, frontend_current=False)
    assert done.state == COMPLETE, "with nothing obsolete the front end is not waited for"


def test_kept_pods_are_relabelled_and_failed_ones_replaced() -> None:
    pods = _pods(("a", 0, 40, "h1", True), ("b", 40, 80, "h2", True)) + [
        PodView("p-c", ("c", 0, 80), "h2", False, False, True)]
    step = next_step(NEW, pods, "h2", max_surge=8)
    assert step.relabel == ("p-a-0-40",)
    assert step.delete == ("p-c",) and [a.node for a in step.create] == ["c"]


def test_a_new_worker_template_replaces_pods_in_place() -> None:
    pods = [PodView("old-a", ("a", 0, 80), "h1", True, False, False, "t1")]
    step = next_step([Assignment("a", 0, 80)], pods, "h1", max_surge=None, template="t2")
    assert step.delete == ("old-a",) and [a.key for a in step.create] == [("a", 0, 80)]
    assert step.state == DRAINING


def test_replan_due() -> None:
    key = InputsKey("s1", "n1")
    assert replan_due(key, None, False, None, 100.0, 60).trigger == "Created"
    assert replan_due(key, key, False, 0.0, 100.0, 60).trigger is None
    assert replan_due(key, InputsKey("s0", "n1"), False, 90.0, 100.0, 60).trigger == "SpecChanged"
    moved = InputsKey("s1", "n0")
    assert replan_due(key, moved, False, 90.0, 100.0, 60) .not_before == 150.0
    assert replan_due(key, moved, True, 90.0, 100.0, 60).trigger == "PlanInfeasible"
    assert replan_due(key, moved, False, 30.0, 100.0, 60).trigger == "NodesChanged"


def test_decide() -> None:
    assert decide("Auto", "NodesChanged", 100.0, 104.0, 5).outcome == "Kept"
    assert decide("Auto", "NodesChanged", 100.0, 105.0, 5).outcome == "Applied"
    assert decide("Auto", "PlanInfeasible", 100.0, 50.0, 5).outcome == "Applied"
    assert decide("Auto", "Created", None, 50.0, 5).outcome == "Applied"
    assert decide("DryRun", "Created", None, 50.0, 5).outcome == "Proposed"
    assert decide("Manual", "SpecChanged", 10.0, 50.0, 5).outcome == "Proposed"
    assert "below the 5% threshold" in decide("Auto", "NodesChanged", 100.0, 101.0, 5).message


def test_broken_nodes() -> None:
    nodes = fleet(1)
    nodes[0]["status"]["conditions"][0]["status"] = "False"
    found = discover([node_facts(n) for n in nodes], parse_spec(fleet_spec()).pools, load_catalog())
    plan_nodes = [("gke-a100-0", "A100"), ("gke-l4-0", "L4"), ("dc-t4-0", "A100"), ("gone", "T4")]
    assert broken_nodes(plan_nodes, found) == ["dc-t4-0", "gke-a100-0", "gone"]
