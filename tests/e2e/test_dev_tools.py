"""The stand-in cluster's pure parts: container translation, scheduling, the simulated fleet,
the status view, and that docs/dev-cluster.md shows the example the end-to-end test applies."""

from pathlib import Path

from helix_dev.containers import translate_container
from helix_dev.fleet import EXAMPLES, SLOWDOWN, demo_manifests, demo_nodes, device_env, gpu_node
from helix_dev.network import PortBook
from helix_dev.scheduler import why_not
from helix_dev.view import Snapshot, render
from helix_planner.cli import build_parser
from helix_planner.profiles import gpu_from_mapping

REPO = Path(__file__).resolve().parents[2]


def _worker_pod() -> dict:
    return {"metadata": {"name": "demo-w-a", "namespace": "ns", "uid": "u1"},
            "spec": {"hostname": "w-a", "subdomain": "demo-workers", "containers": [{
                "name": "worker", "command": ["helix", "worker", "--plan", "/etc/helix/plan.json", "--host", "0.0.0.0",
                                              "--port", "50051", "--http-port=8081"],
                "env": [{"name": "HELIX_WORKER_PORT", "value": "50051"}, {"name": "HELIX_SLOWDOWN", "value": "5"}],
                "ports": [{"name": "grpc", "containerPort": 50051}, {"name": "http", "containerPort": 8081}]}]}}


def test_containers_run_on_loopback_with_translated_paths_ports_and_names(tmp_path: Path) -> None:
    ports = PortBook()
    pod = _worker_pod()
    ports.name_pod(pod)
    command = translate_container(pod, pod["spec"]["containers"][0], {"/etc/helix": tmp_path}, ports,
                                  {"HELIX_SLOWDOWN": "2", "HELIX_TORCH_THREADS": "1"})
    grpc, http = ports.pod_port(pod, "grpc"), ports.pod_port(pod, 8081)
    assert command.argv == ["helix", "worker", "--plan", f"{tmp_path}/plan.json", "--host", "127.0.0.1",
                            "--port", str(grpc), f"--http-port={http}"]
    assert command.env["HELIX_WORKER_PORT"] == str(grpc)
    assert command.env["HELIX_SLOWDOWN"] == "5", "the pod's env wins over what the node adds"
    assert command.env["HELIX_TORCH_THREADS"] == "1"
    frontend = {"metadata": {"name": "fe", "namespace": "ns"}, "spec": {"containers": [{
        "name": "frontend", "command": ["helix", "frontend", "--endpoint=a=w-a.demo-workers.ns.svc:50051",
                                        "--endpoint=b=w-b.demo-workers.ns.svc:50051"]}]}}
    argv = translate_container(frontend, frontend["spec"]["containers"][0], {}, ports, {}).argv
    assert argv[2] == f"--endpoint=a=127.0.0.1:{grpc}", "a known pod's DNS name becomes its local port"
    later = {"metadata": {"name": "demo-w-b", "namespace": "ns", "uid": "u3"},
             "spec": {"hostname": "w-b", "subdomain": "demo-workers", "containers": pod["spec"]["containers"]}}
    assert argv[3] == f"--endpoint=b=127.0.0.1:{ports.pod_port(later, 'grpc')}", \
        "a pod's DNS name is the port of the pod that will answer it, before that pod is seen: " \
        "addresses compared as text (a peer list against a route) translate alike whenever translated"
    assert ports.translate("api.ns.svc:443") == "api.ns.svc:443", "an unknown Service stays unresolvable"
    replacement = {**pod, "metadata": {**pod["metadata"], "name": "demo-w-a-2", "uid": "u2"}}
    assert ports.pod_port(replacement, "grpc") == grpc, "the same DNS name answers on the same port"


def test_scheduler_honours_affinity_taints_and_gpus_held_by_terminating_pods() -> None:
    node = gpu_node("gpu-0", "SIM-A100", "us-east")
    pod = {"metadata": {"name": "p"}, "spec": {
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
            {"matchFields": [{"key": "metadata.name", "operator": "In", "values": ["gpu-0"]}]}]}}},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}
    assert why_not(pod, node, []) is None
    assert why_not(pod, gpu_node("gpu-1", "SIM-A100", "us-east"), []) == "node affinity or selector does not match"
    untolerating = {**pod, "spec": {**pod["spec"], "tolerations": []}}
    assert why_not(untolerating, node, []) == "untolerated taint"
    terminating = {"metadata": {"name": "old", "deletionTimestamp": "now"}, "spec": pod["spec"],
                   "status": {"phase": "Running"}}
    assert why_not(pod, node, [terminating]) == "insufficient nvidia.com/gpu"
    assert why_not(pod, node, [{**terminating, "status": {"phase": "Failed"}}]) is None


def test_simulated_gpu_speeds_match_the_slowdowns() -> None:
    profiles = {d["spec"]["gpuType"]: gpu_from_mapping(d["spec"]["gpuType"], d["spec"], source="test")
                for d in demo_manifests() if d["kind"] == "GPUProfile"}
    fastest = profiles["SIM-A100"]
    for name, slowdown in SLOWDOWN.items():
        assert abs(fastest.peak_flops / profiles[name].peak_flops - slowdown) < 1e-3
        assert abs(fastest.memory_bandwidth / profiles[name].memory_bandwidth - slowdown) < 1e-3
    gpus = [n for n in demo_nodes() if "nvidia.com/gpu.product" in n["metadata"]["labels"]]
    assert len(gpus) == 6 and {n["metadata"]["labels"]["topology.kubernetes.io/region"] for n in gpus} == {
        "us-east", "eu-west"}
    assert device_env(gpus[2]["metadata"]["labels"]) == {"HELIX_SLOWDOWN": "3"} and device_env({}) == {}


def test_docs_show_the_example_the_end_to_end_test_applies() -> None:
    example = (EXAMPLES / "helixcluster-local.yaml").read_text()
    assert example[example.index("apiVersion"):] in (REPO / "docs" / "dev-cluster.md").read_text()


def test_status_view_and_command() -> None:
    pod = {"metadata": {"name": "demo-w-gpu-east-0", "annotations": {"helix.dev/layers": "0-4"}},
           "spec": {"nodeName": "gpu-east-0"},
           "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}],
                      "containerStatuses": [{"restartCount": 2}]}}
    cluster = {"metadata": {"name": "demo"}, "status": {"phase": "Running", "activePlan": {
        "hash": "abc", "tokensPerSecond": 12.5, "pipelines": 3, "nodes": 6}, "observedTokensPerSecond": 4.2}}
    text = render(Snapshot(cluster, demo_nodes(), [pod], endpoints={"OpenAI HTTP": "http://127.0.0.1:1/v1"},
                           sample="'Helix' -> ok"))
    assert ("HelixCluster demo: Running   plan abc  12.5 tok/s planned  3 pipelines over 6 nodes  "
            "4.2 tok/s observed") in text
    row = next(line for line in text.splitlines() if line.startswith("gpu-east-0"))
    assert row.split() == ["gpu-east-0", "SIM-A100", "us-east", "1x", "demo-w-gpu-east-0", "0-4", "Running", "ready",
                           "2"]
    assert "sample  'Helix' -> ok" in text
    args = build_parser().parse_args(["dev", "cluster", "--scenario"])
    assert args.scenario and args.func.__module__ == "helix_dev.commands"


def test_in_an_emulated_network_pod_names_resolve_to_their_nodes_address_once_bound() -> None:
    ports = PortBook()
    ports.node_addresses = {"gpu-0": "10.90.0.2"}
    pod = _worker_pod()
    name = "w-a.demo-workers.ns.svc:50051"
    assert ports.translate(name) == name, "no pod of that name is bound yet: DNS has no record"
    ports.name_pod({**pod, "spec": {**pod["spec"], "nodeName": "gpu-0"}})
    assert ports.translate(f"--endpoint=a={name}") == f"--endpoint=a=10.90.0.2:{ports.pod_port(pod, 'grpc')}"
    ports.name_service("ns", "demo")
    assert ports.translate("demo.ns.svc:8000") == "demo.ns.svc:8000", \
        "a Service's proxy serves this machine, outside the emulated network"
