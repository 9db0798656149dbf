"""Pure builders: the plan ConfigMap, worker pods, the front end, names."""

import json

import pytest
from opkit import fleet_spec, plan_document

from helix_operator.api import names
from helix_operator.api.meta import dns_name
from helix_operator.api.spec import SpecError, parse_spec
from helix_operator.children.frontend import build_frontend_deployment, build_frontend_service, deployment_ready
from helix_operator.children.planmap import build_plan_configmap
from helix_operator.children.workers import (
    Assignment,
    build_worker_pod,
    build_workers_service,
    pod_assignment,
    template_hash,
)
from helix_planner.plan_format import load_plan, plan_from_dict

OWNER = {"apiVersion": "helix.dev/v1alpha1", "kind": "HelixCluster",
         "metadata": {"name": "llama", "namespace": "inference", "uid": "uid-1"}}
PLAN = plan_from_dict(plan_document(
    {"gke-a100-0": ("A100", "us-central1", 0, 40), "gke-a100-1": ("A100", "us-central1", 40, 80)},
    [["gke-a100-0", "gke-a100-1"]], 1234.5))


def _owned(obj) -> None:
    ref = obj["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == ("HelixCluster", "llama", "uid-1", True)
    assert obj["metadata"]["namespace"] == "inference"
    assert obj["metadata"]["labels"][names.LABEL_CLUSTER] == "llama"


def test_plan_configmap_holds_the_plan_document() -> None:
    cm = build_plan_configmap(OWNER, PLAN, "spec.nodes")
    _owned(cm)
    assert cm["metadata"]["name"] == f"llama-plan-{PLAN.plan_hash}"
    assert cm["immutable"] is True
    assert cm["metadata"]["labels"][names.LABEL_PLAN_HASH] == PLAN.plan_hash
    assert load_plan(cm["data"]["plan.json"]).plan_hash == PLAN.plan_hash
    assert json.loads(cm["data"]["plan.json"])["throughput"] == 1234.5


def test_worker_pod_is_pinned_and_told_its_layers() -> None:
    spec = parse_spec(fleet_spec())
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    pod = build_worker_pod(OWNER, spec, Assignment("dc-t4-3", 10, 14, 2, (toleration,)), "abc123", "llama-plan-abc")
    _owned(pod)
    assert pod["metadata"]["name"] == f"llama-w-dc-t4-3-10-14-{template_hash(spec)}"
    terms = pod["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
    assert terms["nodeSelectorTerms"][0]["matchFields"] == [
        {"key": "metadata.name", "operator": "In", "values": ["dc-t4-3"]}]
    container = pod["spec"]["containers"][0]
    assert container["command"] == ["helix", "worker", "--plan", "/etc/helix/plan.json", "--node", "dc-t4-3",
                                    "--model", "/models/random", "--host", "0.0.0.0", "--port", "50051",
                                    "--http-port", "8081", "--peers", "/var/run/helix/peers/endpoints.json"]
    assert container["ports"] == [{"name": "grpc", "containerPort": 50051}, {"name": "http", "containerPort": 8081},
                                  {"name": "data", "containerPort": 8082}]
    assert {"name": "HELIX_DATA_PORT", "value": "8082"} in container["env"]
    assert (pod["spec"]["hostname"], pod["spec"]["subdomain"]) == ("w-dc-t4-3", "llama-workers")
    env = {e["name"]: e["value"] for e in container["env"]}
    assert (env["HELIX_LAYER_START"], env["HELIX_LAYER_END"], env["HELIX_PLAN_HASH"]) == ("10", "14", "abc123")
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 2}
    assert pod["spec"]["volumes"] == [{"name": "plan", "configMap": {"name": "llama-plan-abc"}},
                                      {"name": "peers", "configMap": {"name": "llama-peers"}},
                                      {"name": "weights", "emptyDir": {}},
                                      {"name": "cluster-tls", "secret": {"secretName": "llama-tls"}}]
    init = pod["spec"]["initContainers"][0]["command"]
    assert init[:4] == ["helix", "model", "init", "/models/random"] and init[init.index("--layers") + 1] == "80"
    assert pod["spec"]["tolerations"] == [toleration]
    assert pod["spec"]["terminationGracePeriodSeconds"] == 5
    assert pod_assignment(pod) == ("dc-t4-3", 10, 14)


def test_template_hash_moves_with_the_worker_spec_only() -> None:
    base = template_hash(parse_spec(fleet_spec()))
    assert template_hash(parse_spec(fleet_spec(timeLimitSeconds=9))) == base
    raw = fleet_spec()
    raw["worker"]["image"] = "helix/worker:v2"
    assert template_hash(parse_spec(raw)) != base


def test_worker_template_overrides_and_credentials() -> None:
    raw = fleet_spec()
    raw["model"].update(weightsUri="pvc://weights/llama-2-70b", credentialsSecret={"name": "hf"})
    raw["worker"].update(
        resources={"requests": {"memory": "64Gi"}, "limits": {"memory": "96Gi"}},
        env=[{"name": "HELIX_MODEL", "value": "override"}, {"name": "LOG", "value": "debug"}],
        template={"metadata": {"labels": {"team": "ml"}},
                  "spec": {"priorityClassName": "critical",
                           "containers": [{"name": "worker", "securityContext": {"runAsNonRoot": True}},
                                          {"name": "sidecar", "image": "busybox"}]}})
    pod = build_worker_pod(OWNER, parse_spec(raw), Assignment("n", 0, 80), "h", "cm")
    worker, sidecar = pod["spec"]["containers"]
    assert pod["metadata"]["labels"]["team"] == "ml" and pod["metadata"]["labels"][names.LABEL_CLUSTER] == "llama"
    assert pod["spec"]["priorityClassName"] == "critical"
    assert worker["securityContext"]["runAsNonRoot"] is True and worker["image"] == "helix/worker:test"
    assert sidecar["image"] == "busybox" and sidecar["securityContext"]["allowPrivilegeEscalation"] is False
    assert "envFrom" not in worker, "a mounted claim needs no credentials"
    env = {e["name"]: e["value"] for e in worker["env"]}
    assert (env["HELIX_MODEL"], env["LOG"], env["HELIX_WEIGHTS_URI"]) == ("override", "debug",
                                                                         "pvc://weights/llama-2-70b")
    assert worker["command"][worker["command"].index("--model") + 1] == "/models/llama-2-70b"
    claim = {"name": "weights", "persistentVolumeClaim": {"claimName": "weights", "readOnly": True}}
    assert claim in pod["spec"]["volumes"]
    assert "initContainers" not in pod["spec"]
    assert worker["resources"] == {"limits": {"memory": "96Gi", "nvidia.com/gpu": 1}, "requests": {"memory": "64Gi"}}


def test_remote_weights_are_fetched_by_an_init_container() -> None:
    """hf:// and s3://: each worker fetches the shards of its layers, the front end config and tokenizer only."""
    raw = fleet_spec()
    raw["model"].update(weightsUri="hf://meta-llama/Llama-2-70b-hf@refs/pr/1", credentialsSecret={"name": "hf"})
    spec = parse_spec(raw)
    pod = build_worker_pod(OWNER, spec, Assignment("n", 10, 14), "h", "cm")
    init, = pod["spec"]["initContainers"]
    assert init["name"] == "fetch-weights" and init["image"] == "helix/worker:test"
    assert init["command"] == ["helix", "weights", "fetch", "hf://meta-llama/Llama-2-70b-hf@refs/pr/1",
                               "/models/checkpoint", "--layers", "10-14"]
    assert init["envFrom"] == [{"secretRef": {"name": "hf"}}]
    assert init["volumeMounts"] == [{"name": "weights", "mountPath": "/models"}]
    worker = pod["spec"]["containers"][0]
    assert worker["command"][worker["command"].index("--model") + 1] == "/models/checkpoint"
    assert {"name": "weights", "mountPath": "/models", "readOnly": True} in worker["volumeMounts"]
    assert {"name": "weights", "emptyDir": {}} in pod["spec"]["volumes"]

    raw["model"] = {"name": "llama2-70b", "weightsUri": "s3://models/llama-2-70b"}
    spec = parse_spec(raw)
    template = build_frontend_deployment(OWNER, spec, PLAN, "cm")["spec"]["template"]["spec"]
    init, = template["initContainers"]
    assert init["command"][3:] == ["s3://models/llama-2-70b", "/models/checkpoint", "--no-weights"]
    assert "envFrom" not in init, "no credentials Secret: anonymous reads"
    command = template["containers"][0]["command"]
    assert command[command.index("--model") + 1] == "/models/checkpoint"
    assert template_hash(spec) != template_hash(parse_spec(fleet_spec())), "a new URI replaces the workers"


def test_hf_weights_at_the_plans_commit_and_through_a_shared_cache() -> None:
    """Every pod of a plan fetches the commit the plan pinned; workers keep files in the cache claim."""
    sha = "c" * 40
    raw = fleet_spec()
    raw["model"].update(weightsUri="hf://org/model@main", credentialsSecret={"name": "hf"},
                        cache={"claimName": "hf-cache"})
    spec = parse_spec(raw)
    pod = build_worker_pod(OWNER, spec, Assignment("n", 10, 14), "h", "cm", revision=sha)
    init, = pod["spec"]["initContainers"]
    assert init["command"] == ["helix", "weights", "fetch", f"hf://org/model@{sha}", "/models/checkpoint",
                               "--layers", "10-14", "--cache", "/models-cache"]
    assert init["volumeMounts"] == [{"name": "weights", "mountPath": "/models"},
                                    {"name": "weights-cache", "mountPath": "/models-cache"}]
    worker = pod["spec"]["containers"][0]
    assert {"name": "weights-cache", "mountPath": "/models-cache", "readOnly": True} in worker["volumeMounts"]
    assert {"name": "weights-cache", "persistentVolumeClaim": {"claimName": "hf-cache"}} in pod["spec"]["volumes"]
    assert {"name": "HELIX_WEIGHTS_URI", "value": f"hf://org/model@{sha}"} in worker["env"]
    assert template_hash(spec, sha) != template_hash(spec, "d" * 40), "another commit replaces, never relabels"
    unpinned = build_worker_pod(OWNER, spec, Assignment("n", 10, 14), "h", "cm")["spec"]["initContainers"][0]
    assert unpinned["command"][3] == "hf://org/model@main", "a plan made before pinning keeps the spec's URI"

    plan = plan_from_dict({**PLAN.to_dict(), "model": {**PLAN.model, "revision": sha}})
    template = build_frontend_deployment(OWNER, spec, plan, "cm")["spec"]["template"]["spec"]
    init, = template["initContainers"]
    assert init["command"] == ["helix", "weights", "fetch", f"hf://org/model@{sha}", "/models/checkpoint",
                               "--no-weights"]
    assert not any("persistentVolumeClaim" in v for v in template["volumes"]), "the front end reads no shards"
    raw["model"]["weightsUri"] = "s3://bucket/model"
    with pytest.raises(SpecError, match="spec.model.cache: caches hf:// weights only"):
        parse_spec(raw)


def test_frontend_deployment_and_service() -> None:
    raw = fleet_spec()
    raw["frontend"] = {"replicas": 2, "service": {"type": "LoadBalancer", "httpPort": 80, "annotations": {"a": "b"}}}
    spec = parse_spec(raw)
    deployment = build_frontend_deployment(OWNER, spec, PLAN, "llama-plan-abc")
    _owned(deployment)
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxUnavailable": 0, "maxSurge": 1}
    template = deployment["spec"]["template"]
    assert template["metadata"]["labels"][names.LABEL_PLAN_HASH] == PLAN.plan_hash
    command = template["spec"]["containers"][0]["command"]
    assert command[:4] == ["helix", "frontend", "--plan", "/etc/helix/plan.json"]
    assert command[command.index("--http-port") + 1] == "80"
    assert [a for a in command if a.startswith("--endpoint=")] == [
        "--endpoint=gke-a100-0=w-gke-a100-0.llama-workers.inference.svc:50051",
        "--endpoint=gke-a100-1=w-gke-a100-1.llama-workers.inference.svc:50051"]
    assert template["spec"]["volumes"][0]["configMap"]["name"] == "llama-plan-abc"
    env = {e["name"]: e["value"] for e in template["spec"]["containers"][0]["env"]}
    assert env["HELIX_DRAIN_SECONDS"] == "5", "the front end drains within the pods' grace period"
    delay = float(env["HELIX_DRAIN_DELAY_SECONDS"])  # accepting while endpoints drop the pod, then draining
    assert delay > 0 and template["spec"]["terminationGracePeriodSeconds"] == 5 + delay
    assert env["HELIX_ROUTING"] == "adaptive", "the CRD's default routing reaches the front end"
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= template["metadata"]["labels"].items()
    assert build_frontend_deployment(OWNER, spec, PLAN, "cm", replicas=0)["spec"]["replicas"] == 0
    service = build_frontend_service(OWNER, spec)
    _owned(service)
    assert service["metadata"]["name"] == "llama" and service["metadata"]["annotations"] == {"a": "b"}
    assert service["spec"]["type"] == "LoadBalancer" and service["spec"]["selector"] == selector
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("http", 80), ("grpc", 8001)]


def test_headless_workers_service() -> None:
    service = build_workers_service(OWNER, parse_spec(fleet_spec()))
    _owned(service)
    assert service["metadata"]["name"] == "llama-workers" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {names.LABEL_CLUSTER: "llama", names.LABEL_COMPONENT: "worker"}


def test_deployment_readiness() -> None:
    deployment = {"spec": {"replicas": 2}, "status": {"readyReplicas": 1, "updatedReplicas": 2}}
    assert deployment_ready(deployment) == (False, "1/2 front-end replicas ready, 2 updated")
    deployment["status"]["readyReplicas"] = 2
    assert deployment_ready(deployment)[0] is True
    assert deployment_ready(None)[0] is False


def test_dns_names_stay_valid() -> None:
    long = dns_name("a" * 50, "w", "gke-cluster-default-pool-" + "x" * 40, "0-80")
    assert len(long) == 63 and long == long.lower() and not long.endswith("-")
    assert dns_name("My_Cluster", "w", "node.example.com") == "my-cluster-w-node-example-com"
