"""Pod security: built pods pass Pod Security "restricted", templates cannot undo it, and the
weights credentials reach only the init container that downloads the weights."""

import copy
import dataclasses
from typing import Any

import pytest
from opkit import fleet_spec
from pss import RESTRICTED, violations
from test_manifests import OWNER, PLAN

from helix_operator.api.spec import ClusterSpec, SpecError, parse_spec
from helix_operator.children.frontend import build_frontend_deployment
from helix_operator.children.workers import Assignment, build_worker_pod

WEIGHTS = {"random": {}, "hf": {"weightsUri": "hf://org/repo", "credentialsSecret": {"name": "hf"}},
           "s3": {"weightsUri": "s3://models/llama", "credentialsSecret": {"name": "aws"}},
           "pvc": {"weightsUri": "pvc://claim/llama", "credentialsSecret": {"name": "unused"}}}


def _spec(**model: Any) -> ClusterSpec:
    raw = fleet_spec()
    raw["model"].update(model)
    return parse_spec(raw)


def _worker(spec: ClusterSpec) -> dict[str, Any]:
    return build_worker_pod(OWNER, spec, Assignment("n", 0, 40), "h", "cm")


def _frontend(spec: ClusterSpec) -> dict[str, Any]:
    """The front end's pod template, with the namespace a pod would get."""
    template = build_frontend_deployment(OWNER, spec, PLAN, "cm")["spec"]["template"]
    return {"metadata": template["metadata"], "spec": template["spec"]}


PODS = {"worker": _worker, "frontend": _frontend}


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("kind", PODS)
def test_built_pods_pass_restricted(kind: str, weights: str) -> None:
    pod = PODS[kind](_spec(**WEIGHTS[weights]))
    assert violations(pod) == []
    wanted = {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    assert wanted.items() <= pod["spec"]["securityContext"].items()
    init = pod["spec"].get("initContainers", [])
    assert len(init) == (0 if weights == "pvc" else 1)
    for container in pod["spec"]["containers"] + init:
        assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}


def test_template_may_tighten_and_its_sidecars_are_restricted_too() -> None:
    raw = fleet_spec()
    sidecar = {"name": "proxy", "image": "envoy", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}}}
    raw["worker"]["template"] = {"spec": {
        "securityContext": {"runAsUser": 20000, "fsGroup": 20000},
        "containers": [{"name": "worker", "securityContext": {"readOnlyRootFilesystem": True}}, sidecar]}}
    raw["frontend"] = {"template": copy.deepcopy(raw["worker"]["template"])}
    raw["frontend"]["template"]["spec"]["containers"][0]["name"] = "frontend"
    spec = parse_spec(raw)
    for pod in (_worker(spec), _frontend(spec)):
        assert violations(pod) == []
        assert pod["spec"]["securityContext"]["runAsUser"] == 20000
        main, proxy = pod["spec"]["containers"]
        assert main["securityContext"]["readOnlyRootFilesystem"] is True
        assert proxy["securityContext"] == {"capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]},
                                            "allowPrivilegeEscalation": False}


def test_frontend_template_merges_like_the_workers() -> None:
    raw = fleet_spec()
    container = {"name": "frontend", "env": [{"name": "X", "value": "1"}]}
    raw["frontend"] = {"template": {"metadata": {"labels": {"team": "ml"}, "annotations": {"a": "b"}},
                                    "spec": {"priorityClassName": "serving", "containers": [container]}}}
    template = build_frontend_deployment(OWNER, parse_spec(raw), PLAN, "cm")["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "ml" and template["metadata"]["annotations"] == {"a": "b"}
    assert template["metadata"]["labels"]["helix.dev/cluster"] == "llama"
    assert template["spec"]["priorityClassName"] == "serving"
    frontend, = template["spec"]["containers"]
    assert frontend["env"][-1] == {"name": "X", "value": "1"} and frontend["command"][:2] == ["helix", "frontend"]
    assert any(e["name"] == "HELIX_PLAN_HASH" for e in frontend["env"]), "the override adds, it does not replace"


CONTAINER = "spec.containers[0].securityContext"
BAD_TEMPLATES = [
    ("privileged", {"containers": [{"name": "worker", "securityContext": {"privileged": True}}]},
     f"{CONTAINER}.privileged", "must not be true"),
    ("escalation", {"containers": [{"name": "worker", "securityContext": {"allowPrivilegeEscalation": True}}]},
     f"{CONTAINER}.allowPrivilegeEscalation", "must be false"),
    ("capability", {"containers": [{"name": "worker", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]},
     f"{CONTAINER}.capabilities.add", "SYS_ADMIN may not be added; only NET_BIND_SERVICE"),
    ("init root", {"initContainers": [{"name": "fetch-weights", "securityContext": {"runAsUser": 0}}]},
     "spec.initContainers[0].securityContext.runAsUser", "must not be 0"),
    ("hostNetwork", {"hostNetwork": True}, "spec.hostNetwork", "must not be true"),
    ("hostPID", {"hostPID": True}, "spec.hostPID", "must not be true"),
    ("hostIPC", {"hostIPC": True}, "spec.hostIPC", "must not be true"),
    ("hostPath", {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "spec.volumes[0].hostPath",
     "use a persistentVolumeClaim"),
    ("nfs", {"volumes": [{"name": "models", "nfs": {"server": "nas", "path": "/"}}]}, "spec.volumes[0].nfs",
     "volume type nfs is not allowed"),
    ("pod root", {"securityContext": {"runAsUser": 0}}, "spec.securityContext.runAsUser", "give another uid"),
    ("non-root false", {"securityContext": {"runAsNonRoot": False}}, "spec.securityContext.runAsNonRoot",
     "must not be false"),
    ("unconfined", {"securityContext": {"seccompProfile": {"type": "Unconfined"}}},
     "spec.securityContext.seccompProfile.type", "use RuntimeDefault"),
    ("sysctl", {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}},
     "spec.securityContext.sysctls[0]", "not a safe sysctl"),
    ("hostPort", {"containers": [{"name": "worker", "ports": [{"containerPort": 80, "hostPort": 80}]}]},
     "spec.containers[0].ports[0].hostPort", "host ports are not allowed"),
    ("procMount", {"containers": [{"name": "worker", "securityContext": {"procMount": "Unmasked"}}]},
     f"{CONTAINER}.procMount", "must be Default"),
    ("selinux", {"securityContext": {"seLinuxOptions": {"type": "spc_t"}}}, "spec.securityContext.seLinuxOptions",
     "remove user and role"),
]


@pytest.mark.parametrize("component", ["worker", "frontend"])
@pytest.mark.parametrize("case", BAD_TEMPLATES, ids=[c[0] for c in BAD_TEMPLATES])
def test_templates_that_break_restricted_are_refused(case, component: str) -> None:
    _, pod_spec, path, message = case
    raw = fleet_spec()
    raw.setdefault(component, {})["template"] = {"spec": pod_spec}
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    assert err.value.path == f"spec.{component}.template.{path}" and message in str(err.value)
    assert str(err.value).startswith(f"spec.{component}.template.{path}: ")


@pytest.mark.parametrize("case", BAD_TEMPLATES, ids=[c[0] for c in BAD_TEMPLATES])
def test_what_is_refused_would_break_restricted(case) -> None:
    """The operator's template checks and the published profile agree: let through, each
    refused template would make the built pod fail the independent checker."""
    spec = parse_spec(fleet_spec())
    unchecked = dataclasses.replace(spec, worker=dataclasses.replace(spec.worker, template={"spec": case[1]}))
    assert violations(_worker(unchecked))


def test_a_template_of_the_wrong_shape_is_refused() -> None:
    raw = fleet_spec()
    raw["frontend"] = {"template": {"spec": {"containers": {"name": "frontend"}}}}
    with pytest.raises(SpecError, match=r"^spec\.frontend\.template: is not a pod template"):
        parse_spec(raw)


def test_apparmor_annotation_is_refused() -> None:
    raw = fleet_spec()
    raw["worker"]["template"] = {"metadata": {"annotations": {
        "container.apparmor.security.beta.kubernetes.io/worker": "unconfined"}}}
    with pytest.raises(SpecError, match=r"metadata\.annotations\[container\.apparmor.*/worker\]: unconfined"):
        parse_spec(raw)


COMPLIANT = {"metadata": {"name": "p"}, "spec": {
    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [{"name": "c", "securityContext": {"allowPrivilegeEscalation": False,
                                                      "capabilities": {"drop": ["ALL"]}}}]}}
CONTROL_BREAKERS = {
    "HostProcess": ("spec.securityContext", {"windowsOptions": {"hostProcess": True}}),
    "Host Namespaces": ("spec", {"hostPID": True}),
    "Privileged Containers": ("spec.containers.0.securityContext", {"privileged": True}),
    "Capabilities (baseline)": ("spec.containers.0.securityContext", {"capabilities": {"add": ["SYS_ADMIN"],
                                                                                        "drop": ["ALL"]}}),
    "HostPath Volumes": ("spec", {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}),
    "Host Ports": ("spec.containers.0", {"ports": [{"containerPort": 1, "hostPort": 1}]}),
    "AppArmor": ("metadata", {"annotations": {"container.apparmor.security.beta.kubernetes.io/c": "unconfined"}}),
    "SELinux": ("spec.securityContext", {"seLinuxOptions": {"user": "root"}}),
    "/proc Mount Type": ("spec.containers.0.securityContext", {"procMount": "Unmasked"}),
    "Seccomp (baseline)": ("spec.containers.0.securityContext", {"seccompProfile": {"type": "Unconfined"}}),
    "Sysctls": ("spec.securityContext", {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}),
    "Volume Types": ("spec", {"volumes": [{"name": "n", "nfs": {"server": "s", "path": "/"}}]}),
    "Privilege Escalation": ("spec.containers.0.securityContext", {"allowPrivilegeEscalation": True}),
    "Running as Non-root": ("spec.securityContext", {"runAsNonRoot": False}),
    "Running as Non-root user": ("spec.securityContext", {"runAsUser": 0}),
    "Seccomp (restricted)": ("spec.securityContext", {"seccompProfile": {"type": "Unconfined"}}),
    "Capabilities (restricted)": ("spec.containers.0.securityContext", {"capabilities": {"drop": ["NET_RAW"]}}),
}


@pytest.mark.parametrize("control", RESTRICTED)
def test_checker_catches_each_control(control: str) -> None:
    """The checker itself: a compliant pod passes, and one change breaks the control it targets."""
    assert violations(COMPLIANT) == []
    pod = copy.deepcopy(COMPLIANT)
    where, change = CONTROL_BREAKERS[control]
    node: Any = pod
    for key in where.split("."):
        node = node[int(key)] if key.isdigit() else node[key]
    node.update(change)
    assert control in {found for found, _ in violations(pod)}


def test_a_pod_without_security_settings_breaks_four_controls_per_container() -> None:
    """What testers found before: a worker and its init container with no securityContext."""
    pod = {"metadata": {}, "spec": {"containers": [{"name": "worker"}], "initContainers": [{"name": "init"}]}}
    found = violations(pod)
    assert len(found) == 8
    assert {control for control, _ in found} == {"Privilege Escalation", "Running as Non-root",
                                                  "Seccomp (restricted)", "Capabilities (restricted)"}


def _secret_refs(container: dict[str, Any]) -> list[str]:
    refs = [e["secretRef"]["name"] for e in container.get("envFrom") or [] if "secretRef" in e]
    return refs + [e["valueFrom"]["secretKeyRef"]["name"] for e in container.get("env") or []
                   if "secretKeyRef" in (e.get("valueFrom") or {})]


@pytest.mark.parametrize("weights", WEIGHTS)
@pytest.mark.parametrize("kind", PODS)
def test_weights_secret_reaches_only_the_fetching_init_container(kind: str, weights: str) -> None:
    pod = PODS[kind](_spec(**WEIGHTS[weights]))
    secret = (WEIGHTS[weights].get("credentialsSecret") or {}).get("name")
    holders = {c["name"]: _secret_refs(c) for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", [])
               if _secret_refs(c)}
    assert holders == ({"fetch-weights": [secret]} if weights in ("hf", "s3") else {})
    assert not any("secret" in volume and volume["secret"].get("secretName") == secret
                   for volume in pod["spec"]["volumes"])
