"""spec.liveness reaches the pods: the workers and the front end get the heartbeat and hung
bounds, the workers the KV lease, as the data plane's own settings read them."""

from typing import Any

from opkit import fleet_spec
from test_manifests import OWNER, PLAN

from helix_operator.api.spec import parse_spec
from helix_operator.children.frontend import build_frontend_deployment
from helix_operator.children.workers import Assignment, build_worker_pod, template_hash
from helix_worker.envs import Settings

LIVENESS = ("HELIX_HEARTBEAT_SECONDS", "HELIX_HUNG_SECONDS", "HELIX_LEASE_SECONDS")


def _spec(**liveness: float) -> Any:
    raw = fleet_spec()
    if liveness:
        raw["liveness"] = liveness
    return parse_spec(raw)


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def _worker_env(spec: Any) -> dict[str, str]:
    return _env(build_worker_pod(OWNER, spec, Assignment("a", 0, 80), "h", "cm")["spec"]["containers"][0])


def _frontend_env(spec: Any) -> dict[str, str]:
    return _env(build_frontend_deployment(OWNER, spec, PLAN, "cm")["spec"]["template"]["spec"]["containers"][0])


def test_pods_get_the_liveness_bounds_the_spec_gives() -> None:
    spec = _spec(heartbeatSeconds=0.5, hungSeconds=4, leaseSeconds=20)
    worker, frontend = _worker_env(spec), _frontend_env(spec)
    assert [worker[name] for name in LIVENESS] == ["0.5", "4", "20"]
    assert [frontend.get(name) for name in LIVENESS] == ["0.5", "4", None], "the lease is the stages' alone"
    settings = Settings.from_env(worker)  # what the worker makes of its environment
    assert (settings.heartbeat_seconds, settings.hung_seconds, settings.lease_seconds) == (0.5, 4.0, 20.0)


def test_the_defaults_are_the_data_planes() -> None:
    worker, frontend = _worker_env(_spec()), _frontend_env(_spec())
    defaults = Settings()
    assert [float(worker[name]) for name in LIVENESS] == [defaults.heartbeat_seconds, defaults.hung_seconds,
                                                         defaults.lease_seconds]
    assert float(frontend["HELIX_HUNG_SECONDS"]) == defaults.hung_seconds


def test_a_change_rolls_the_workers_and_the_front_end_and_worker_env_wins() -> None:
    base, changed = _spec(), _spec(hungSeconds=5)
    assert template_hash(changed) != template_hash(base), "worker pods are replaced (in batches) to take it"
    template = build_frontend_deployment(OWNER, changed, PLAN, "cm")["spec"]["template"]
    assert template != build_frontend_deployment(OWNER, base, PLAN, "cm")["spec"]["template"], "a rolling update"
    raw = fleet_spec()
    raw["worker"]["env"] = [{"name": "HELIX_LEASE_SECONDS", "value": "90"}]
    env = build_worker_pod(OWNER, parse_spec(raw), Assignment("a", 0, 80), "h", "cm")["spec"]["containers"][0]["env"]
    assert [e["value"] for e in env if e["name"] == "HELIX_LEASE_SECONDS"] == ["90"], "one entry, the user's"
