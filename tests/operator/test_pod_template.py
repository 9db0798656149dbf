"""spec.worker.template and spec.frontend.template merge into the built pods like a strategic
merge patch: list items merge on their key, so adding one env var, volume or port keeps the
operator's own."""

import pytest
from opkit import fleet_spec, plan_document

from helix_operator.api.spec import SpecError, parse_spec
from helix_operator.children.frontend import build_frontend_deployment
from helix_operator.children.workers import Assignment, build_worker_pod
from helix_planner.plan_format import plan_from_dict

OWNER = {"apiVersion": "helix.dev/v1alpha1", "kind": "HelixCluster",
         "metadata": {"name": "llama", "namespace": "inference", "uid": "uid-1"}}
PLAN = plan_from_dict(plan_document({"a": ("A100", "us-central1", 0, 80)}, [["a"]], 100.0))
SHM = {"name": "dshm", "emptyDir": {"medium": "Memory"}}


def _worker(template: dict) -> dict:
    raw = fleet_spec()
    raw["worker"]["template"] = template
    return build_worker_pod(OWNER, parse_spec(raw), Assignment("a", 0, 80), "h", "cm")


def test_adding_an_env_var_and_a_shm_volume_keeps_the_operators() -> None:
    built = _worker({})
    pod = _worker({"spec": {"volumes": [SHM], "containers": [{
        "name": "worker", "env": [{"name": "NCCL_DEBUG", "value": "INFO"}],
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}]}]}})
    container, before = pod["spec"]["containers"][0], built["spec"]["containers"][0]
    assert container["env"] == [*before["env"], {"name": "NCCL_DEBUG", "value": "INFO"}]
    assert container["volumeMounts"] == [*before["volumeMounts"], {"name": "dshm", "mountPath": "/dev/shm"}]
    assert pod["spec"]["volumes"] == [*built["spec"]["volumes"], SHM]
    assert container["command"] == before["command"]


def test_an_item_with_a_built_key_replaces_or_merges_into_it() -> None:
    """env and volumes replace their namesake whole (valueFrom beside value is refused by the API
    server); containers, ports and mounts merge field by field."""
    secret = {"name": "HELIX_MODEL", "valueFrom": {"secretKeyRef": {"name": "m", "key": "name"}}}
    pod = _worker({"spec": {"volumes": [{"name": "plan", "configMap": {"name": "mine"}}], "containers": [{
        "name": "worker", "env": [secret], "ports": [{"containerPort": 50051, "protocol": "TCP"}],
        "volumeMounts": [{"name": "plan", "mountPath": "/etc/helix", "subPath": "x"}]}]}})
    container = pod["spec"]["containers"][0]
    assert [e for e in container["env"] if e["name"] == "HELIX_MODEL"] == [secret]
    assert {"name": "grpc", "containerPort": 50051, "protocol": "TCP"} in container["ports"]
    assert len(container["ports"]) == 3
    plan_mount = next(m for m in container["volumeMounts"] if m["mountPath"] == "/etc/helix")
    assert plan_mount == {"name": "plan", "mountPath": "/etc/helix", "readOnly": True, "subPath": "x"}
    assert {"name": "plan", "configMap": {"name": "mine"}} in pod["spec"]["volumes"]
    assert sum(v["name"] == "plan" for v in pod["spec"]["volumes"]) == 1


def test_the_front_end_template_merges_init_containers_by_name() -> None:
    raw = fleet_spec()
    raw["model"].update(weightsUri="s3://models/llama")
    raw["frontend"] = {"template": {"spec": {"initContainers": [
        {"name": "fetch-weights", "resources": {"limits": {"memory": "1Gi"}}}, {"name": "warm", "image": "busybox"}]}}}
    spec = build_frontend_deployment(OWNER, parse_spec(raw), PLAN, "cm")["spec"]["template"]["spec"]
    fetch, warm = spec["initContainers"]
    assert fetch["command"][:3] == ["helix", "weights", "fetch"] and fetch["resources"] == {"limits": {"memory": "1Gi"}}
    assert warm["image"] == "busybox"
    assert any(v["name"] == "plan" for v in spec["volumes"])


def test_a_list_item_without_its_merge_key_is_refused() -> None:
    raw = fleet_spec()
    raw["worker"]["template"] = {"spec": {"containers": [{"name": "worker", "env": [{"value": "1"}]}]}}
    with pytest.raises(SpecError, match=r"spec\.worker\.template\.spec\.containers\[0\]\.env\[0\].*needs name"):
        parse_spec(raw)
