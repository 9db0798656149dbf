"""Conditions, aggregate Ready, phase and the status patch."""

from opkit import fleet, fleet_spec, plan_document

from helix_operator.api.spec import parse_spec
from helix_operator.children.frontend import frontend_url
from helix_operator.control.mergepatch import diff
from helix_operator.fleet.discovery import discover, node_facts
from helix_operator.status.build import OWNED, Observation, build_status, conditions, phase, plan_summary
from helix_operator.status.conditions import Condition, aggregate_ready, merge, transitions
from helix_planner.plan_format import plan_from_dict
from helix_planner.profiles import load_catalog

DISCOVERY = discover([node_facts(n) for n in fleet(2)], parse_spec(fleet_spec()).pools, load_catalog())
PLAN = plan_from_dict(plan_document({"gke-a100-0": ("A100", "us-central1", 0, 80)}, [["gke-a100-0"]], 812.34,
                                    bound=850.0))
ACTIVE = plan_summary(PLAN, "llama-plan-x", "2026-01-01T00:00:00Z")
NOW = "2026-01-01T00:01:00Z"


def _by_type(obs: Observation) -> dict[str, Condition]:
    return {c.type: c for c in conditions(obs)}


def test_plan_summary_feeds_printer_columns() -> None:
    assert ACTIVE["tokensPerSecond"] == 812.3 and ACTIVE["pipelines"] == 1 and ACTIVE["nodes"] == 1
    assert ACTIVE["gapPercent"] == "4.4%" and ACTIVE["upperBound"] == 850.0 and ACTIVE["hash"] == PLAN.plan_hash


def test_ready_when_everything_is() -> None:
    obs = Observation(generation=3, discovery=DISCOVERY, active=ACTIVE, workers=("Ready", "1/1"),
                      frontend=("Ready", "1/1"), rollout={"targetHash": "x", "state": "Complete"})
    conds = _by_type(obs)
    assert conds["Ready"].status == "True" and conds["Degraded"].status == "False"
    assert conds["Progressing"].status == "False"
    assert conds["NodesDiscovered"].message == "6 usable GPU nodes in 3 region(s): 2xA100, 2xL4, 2xT4"
    assert phase(obs, conditions(obs)) == "Running"


def test_ready_repeats_the_first_failing_reason() -> None:
    obs = Observation(generation=1, discovery=None, nodes_problem=("NoMatchingNodes", "no node matches"))
    conds = _by_type(obs)
    assert (conds["Ready"].status, conds["Ready"].reason) == ("False", "NoMatchingNodes")
    assert conds["Planned"].status == "Unknown"
    assert phase(obs, conditions(obs)) == "Failed"
    assert aggregate_ready([]).status == "Unknown"


def test_phases() -> None:
    def phase_of(**kw) -> str:
        obs = Observation(generation=1, discovery=DISCOVERY, **kw)
        return phase(obs, conditions(obs))

    assert phase_of(planning=True) == "Planning"
    assert phase_of(mode="DryRun", proposed=ACTIVE) == "DryRun"
    assert phase_of(mode="Manual", proposed=ACTIVE, awaiting_approval=True) == "AwaitingApproval"
    assert phase_of(active=ACTIVE, workers=("Starting", "0/1"), frontend=("Ready", "")) == "Deploying"
    assert phase_of(active=ACTIVE, workers=("Ready", ""), frontend=("Ready", ""),
                    degraded=("NodesLost", "n gone")) == "Degraded"
    assert phase_of(suspended=True, active=ACTIVE) == "Suspended"
    assert phase_of(plan_problem=("InsufficientMemory", "too big")) == "Failed"
    assert phase_of(spec_problem=("InvalidSpec", "bad")) == "Failed"


def test_a_switching_rollout_is_progress() -> None:
    obs = Observation(generation=1, discovery=DISCOVERY, active=ACTIVE, workers=("RollingOut", "2/2"),
                      frontend=("Ready", "1/1"), rollout={"targetHash": "h2", "state": "Switching"})
    progressing = _by_type(obs)["Progressing"]
    assert (progressing.status, progressing.reason) == ("True", "RolloutSwitching")


def test_merge_keeps_transition_time_until_status_changes() -> None:
    first = merge([], [Condition("Planned", "True", "PlanActive", "a")], 1, "t1")
    again = merge(first, [Condition("Planned", "True", "PlanActive", "b")], 2, "t2")
    flipped = merge(again, [Condition("Planned", "False", "Infeasible", "c")], 2, "t3")
    assert [c["lastTransitionTime"] for c in (first[0], again[0], flipped[0])] == ["t1", "t1", "t3"]
    assert again[0]["observedGeneration"] == 2
    assert transitions(first, [Condition("Planned", "True", "PlanActive", "b")]) == []
    assert transitions(first, [Condition("Planned", "True", "Other", "b")])[0].reason == "Other"
    assert transitions([], [Condition("X", "Unknown", "r", "m")]) == []


def test_status_patch_removes_stale_keys_and_is_empty_when_unchanged() -> None:
    obs = Observation(generation=2, discovery=DISCOVERY, active=ACTIVE, workers=("Ready", ""), frontend=("Ready", ""))
    status = build_status(obs, {}, NOW)
    assert status["nodes"] == {"discovered": 6, "used": 1, "byGpuType": {"A100": 2, "L4": 2, "T4": 2},
                               "byRegion": {"europe-west4": 2, "onprem-ams": 2, "us-central1": 2}}
    old = {**status, "proposedPlan": {"hash": "old"}, "observedTokensPerSecond": 5.0,
           "nodes": {**status["nodes"], "byGpuType": {"A100": 2, "L4": 2, "T4": 2, "V100": 1}}}
    patch = diff(old, build_status(obs, old, NOW), OWNED)
    assert patch == {"proposedPlan": None, "nodes": {"byGpuType": {"V100": None}}}
    assert diff(status, build_status(obs, status, NOW), OWNED) == {}


def test_routine_steps_are_normal_events_and_trouble_is_a_warning() -> None:
    """A rollout, planning or a suspend is not a warning; broken nodes and a failed plan are."""
    rolling = Observation(generation=1, discovery=DISCOVERY, active=ACTIVE, workers=("RollingOut", "0/1"),
                          frontend=("Starting", "0/1"), rollout={"targetHash": "h", "state": "Surging"})
    assert all(c.healthy for c in conditions(rolling)), [c for c in conditions(rolling) if not c.healthy]
    suspended = Observation(generation=1, discovery=DISCOVERY, active=ACTIVE, suspended=True)
    assert all(c.healthy for c in conditions(suspended))
    troubled = Observation(generation=1, discovery=DISCOVERY, active=ACTIVE, workers=("Ready", ""),
                           frontend=("Ready", ""), degraded=("NodesLost", "1 gone"),
                           plan_problem=("Infeasible", "no pipeline"))
    assert {c.reason for c in conditions(troubled) if not c.healthy} == {"NodesLost", "Infeasible"}


def test_status_url_is_the_services_address_and_kept_while_the_spec_is_invalid() -> None:
    owner = {"metadata": {"name": "llama", "namespace": "inference"}}
    url = frontend_url(owner, parse_spec(fleet_spec()))
    assert url == "http://llama.inference.svc:8000"
    secured = fleet_spec()
    secured["security"] = {"clientTlsSecret": {"name": "public"}}
    secured["frontend"] = {"service": {"httpPort": 8443}}
    assert frontend_url(owner, parse_spec(secured)) == "https://llama.inference.svc:8443"
    assert build_status(Observation(generation=1, url=url), {}, NOW)["url"] == url
    assert build_status(Observation(generation=2, spec_problem=("InvalidSpec", "bad")), {"url": url}, NOW)["url"] == url
    assert "url" not in build_status(Observation(generation=2, discovery=DISCOVERY), {"url": url}, NOW)
