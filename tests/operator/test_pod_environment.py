"""Every HELIX_* variable the operator puts on a pod is a name the data plane knows, so a pod
starts without the unknown-variable warning that a misspelt setting gets."""

import subprocess
import sys
from typing import Any

from opkit import fleet_spec, plan_document

from helix_operator.api.spec import parse_spec
from helix_operator.children.frontend import build_frontend_deployment
from helix_operator.children.workers import Assignment, build_worker_pod
from helix_planner.plan_format import plan_from_dict
from helix_worker.envs import unknown_variables, warn_unknown

OWNER = {"apiVersion": "helix.dev/v1alpha1", "kind": "HelixCluster",
         "metadata": {"name": "llama", "namespace": "inference", "uid": "uid-1"}}


def _every_env(pod_spec: dict[str, Any]) -> dict[str, str]:
    containers = [*pod_spec["containers"], *pod_spec.get("initContainers", [])]
    return {e["name"]: e.get("value", "") for c in containers for e in c.get("env", [])}


def test_the_operators_pods_carry_only_known_helix_variables() -> None:
    """The fullest spec: remote weights, API keys and client TLS on top of the cluster TLS."""
    raw = fleet_spec()
    raw["model"].update(weightsUri="hf://org/llama", credentialsSecret={"name": "hf"})
    raw["security"] = {"apiKeysSecret": {"name": "keys", "key": "tokens"}, "clientTlsSecret": {"name": "public"}}
    spec = parse_spec(raw)
    plan = plan_from_dict(plan_document({"a": ("A100", "us-central1", 0, 80)}, [["a"]], 100.0))
    worker = build_worker_pod(OWNER, spec, Assignment("a", 0, 80), plan.plan_hash, "cm")["spec"]
    frontend = build_frontend_deployment(OWNER, spec, plan, "cm")["spec"]["template"]["spec"]
    env = _every_env(worker) | _every_env(frontend)
    assert {"HELIX_NODE", "HELIX_WEIGHTS_URI", "HELIX_API_KEYS_FILE", "HELIX_CLIENT_TLS_CERT"} <= set(env)
    assert unknown_variables(env) == []


def test_a_misspelt_setting_is_named_with_the_closest_known_one() -> None:
    lines = unknown_variables({"HELIX_KV_CACHE_TOKEN": "4096", "HELIX_NODE": "a", "HOME": "/root"})
    assert len(lines) == 1 and "HELIX_KV_CACHE_TOKEN (did you mean HELIX_KV_CACHE_TOKENS?)" in lines[0], lines


def test_a_worker_warns_at_start_then_runs_on() -> None:
    """The warning comes once, before the command's own work (here: a plan file that is missing)."""
    env = {"HELIX_TLS_CERTIFICATE": "/tls.crt", "PATH": "/usr/bin:/bin"}
    result = subprocess.run([sys.executable, "-m", "helix_worker", "worker", "--plan", "/nonexistent/plan.json",
                             "--model", "m", "--node", "a"], capture_output=True, text=True, timeout=60, env=env)
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert warnings == ["warning: unknown environment variable HELIX_TLS_CERTIFICATE (did you mean HELIX_TLS_CERT?): "
                        "it is ignored; `helix worker --help` lists the settings"], result.stderr
    assert "cannot read plan /nonexistent/plan.json" in result.stderr


def test_warn_unknown_is_silent_for_known_names(caplog: Any) -> None:
    warn_unknown({"HELIX_SLOWDOWN": "2", "HELIX_CATALOG": "/catalog", "HELIX_TLS_CA": "/ca.crt"})
    assert caplog.records == []
