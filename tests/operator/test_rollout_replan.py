"""Rollout steps (surge, switch, drain) and the replan policy."""

from opkit import fleet, fleet_spec

from helix_operator.api.spec import parse_spec
from helix_operator.children.handover import room_to_make
from helix_operator.children.replacement import replacement_batch, serving, weakest_first
from helix_operator.children.rollout import COMPLETE, DRAINING, REPLACING, SURGING, SWITCHING, PodView, next_step
from helix_operator.children.workers import Assignment
from helix_operator.fleet.discovery import discover, node_facts
from helix_operator.planning.inputs import InputsKey
from helix_operator.planning.replan import broken_nodes, decide, replan_due
from helix_planner.profiles import load_catalog


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


# A replan where every node changes layers (the end-to-end test's relabel + removal): no new
# pipeline can come up on free nodes. The old plan: e0 and e2 hold [0,4), w0, w1 and w2 [4,8).
RUNNING = [[("e0", 0, 4), ("w0", 4, 8)], [("e2", 0, 4), ("w2", 4, 8)], [("e0", 0, 4), ("w1", 4, 8)]]
MOVED = [Assignment("e2", 0, 5), Assignment("w2", 0, 5), Assignment("w0", 0, 5), Assignment("e0", 5, 7),
         Assignment("w1", 7, 8)]
MOVED_PIPELINES = [["e2", "e0", "w1"], ["w2", "e0", "w1"], ["w0", "e0", "w1"]]


def test_a_new_pipeline_comes_up_on_freed_nodes_while_the_old_plan_keeps_one() -> None:
    old = _pods(*[(*key, "h1", True) for key in {k for p in RUNNING for k in p}])

    def step(pods: list[PodView]):
        return next_step(MOVED, pods, "h2", max_surge=8, frontend_current=False, pipelines=MOVED_PIPELINES,
                         running=RUNNING)

    first = step(old)  # free w0, e0, w1 for the third new pipeline: e2 -> w2 keeps serving
    assert first.state == SURGING and not first.switch_frontend
    assert sorted(first.delete) == ["p-e0-0-4", "p-w0-4-8", "p-w1-4-8"]
    assert sorted(a.node for a in first.create) == ["e0", "w0", "w1"]
    leaving = [p for p in old if p.key[0] not in ("e0", "w0", "w1")] + _pods(
        ("e0", 0, 4, "h1", True, True), ("w0", 4, 8, "h1", True, True), ("w1", 4, 8, "h1", True, True))
    coming = _pods(("e0", 5, 7, "h2", False), ("w0", 0, 5, "h2", False), ("w1", 7, 8, "h2", False))
    waiting = step(leaving + coming)
    assert (waiting.state, waiting.switch_frontend, waiting.delete, waiting.create) == (SURGING, False, (), ())
    ready = _pods(("e0", 5, 7, "h2", True), ("w0", 0, 5, "h2", True), ("w1", 7, 8, "h2", True))
    kept = [p for p in old if p.key[0] in ("e2", "w2")]
    assert step(kept + ready).switch_frontend, "the new pipeline is whole: the front end moves"
    # With nothing of the old plan left to keep, the front end moves first, as before.
    alone = [[("e0", 0, 4), ("w0", 4, 8)]]
    assert next_step(MOVED, old, "h2", max_surge=8, frontend_current=False, pipelines=MOVED_PIPELINES,
                     running=alone).state == SWITCHING


def test_room_to_make_keeps_a_whole_running_pipeline_or_switches() -> None:
    up = {k for p in RUNNING for k in p}
    everything = {"e0", "e2", "w0", "w1", "w2"}
    assert room_to_make(MOVED_PIPELINES, set(), set(), everything, RUNNING, up) == ["e0", "w0", "w1"]
    assert room_to_make(MOVED_PIPELINES, set(), set(), everything, RUNNING, up - {("w2", 4, 8)}) is None
    assert room_to_make(MOVED_PIPELINES, {"e0", "w0", "w1"}, set(), {"e2", "w2"}, RUNNING, up) is None
    assert room_to_make(MOVED_PIPELINES, {"w0"}, {"e0", "w1"}, {"e2", "w2"}, RUNNING, up) == []
    assert room_to_make(MOVED_PIPELINES, set(), set(), everything, [], up) is None, "nothing runs: switch"


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
    assert step.state == REPLACING


# Two-stage pipelines over six nodes, widest first: p1 = a-b, p2 = c-d, p3 = e-f.
SIX = [Assignment(n, s, e) for n, s, e in (("a", 0, 40), ("b", 40, 80), ("c", 0, 40), ("d", 40, 80),
                                          ("e", 0, 40), ("f", 40, 80))]
THREE_PIPELINES = [["a", "b"], ["c", "d"], ["e", "f"]]


def _template_rollout(pipelines, max_replace: int, desired=SIX) -> list[list[str]]:
    """Play a worker-spec rollout to the end (replacements come up between steps); the nodes of each batch.

    Checks on every step that at most `max_replace` nodes are in transition."""
    pods = {a.node: PodView(f"old-{a.node}", a.key, "h", True, False, False, "t1") for a in desired}
    batches = []
    for _ in range(20):
        step = next_step(desired, pods.values(), "h", max_surge=None, template="t2", pipelines=pipelines,
                         max_replace=max_replace)
        if step.state == COMPLETE:
            return batches
        assert step.state in (REPLACING, SURGING), step.state
        assert sorted(a.node for a in step.create) == sorted(n.removeprefix("old-") for n in step.delete)
        assert len(step.create) <= max_replace
        if step.create:
            batches.append(sorted(a.node for a in step.create))
            for a in step.create:  # the old pod is gone, the new one not ready yet: check, then make it ready
                pods[a.node] = PodView(f"new-{a.node}", a.key, "h", False, False, False, "t2")
            again = next_step(desired, pods.values(), "h", max_surge=None, template="t2", pipelines=pipelines,
                              max_replace=max_replace)
            assert again.create == () and again.delete == (), "nothing more while a full batch starts"
        for node, pod in pods.items():
            if pod.template == "t2":
                pods[node] = PodView(pod.name, pod.key, "h", True, False, False, "t2")
    raise AssertionError(f"no end: {batches}")


def test_worker_spec_change_replaces_one_pipeline_at_a_time_weakest_first() -> None:
    """New-before-old per pipeline: the other pipelines keep serving while one is replaced."""
    assert _template_rollout(THREE_PIPELINES, max_replace=2) == [["e", "f"], ["c", "d"], ["a", "b"]]
    assert _template_rollout(THREE_PIPELINES, max_replace=1) == [["e"], ["f"], ["c"], ["d"], ["a"], ["b"]]
    assert _template_rollout(THREE_PIPELINES, max_replace=4) == [["c", "d", "e", "f"], ["a", "b"]]


def test_worker_spec_change_where_every_pipeline_shares_a_node() -> None:
    """A node on every pipeline goes alone once nothing else is left; a single pipeline goes at once."""
    shared = [Assignment("hub", 0, 40), Assignment("x", 40, 80), Assignment("y", 40, 80)]
    assert _template_rollout([["hub", "x"], ["hub", "y"]], 2, shared) == [["y"], ["x"], ["hub"]]
    single = SIX[:2]
    assert _template_rollout([["a", "b"]], 8, single) == [["a", "b"]]
    assert _template_rollout([["a", "b"]], 1, single) == [["a"], ["b"]]


def test_replacement_batch_keeps_a_pipeline_whole_around_failures() -> None:
    """A node already down counts: the batch keeps the last whole pipeline serving."""
    stages = [frozenset(p) for p in THREE_PIPELINES]
    assert serving(stages, {"a", "c"}) and not serving(stages, {"a", "c", "e"})
    assert replacement_batch({"a", "b", "c", "d"}, THREE_PIPELINES, down={"e"}, under_way=0, limit=8) == ["c", "d"]
    assert replacement_batch({"a", "b"}, THREE_PIPELINES, down=set(), under_way=2, limit=2) == []
    assert weakest_first({"z", "a", "f"}, THREE_PIPELINES) == ["z", "f", "a"]


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
