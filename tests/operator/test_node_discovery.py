"""Node discovery: GPU type and region from GKE, GFD, EKS labels or the spec; pools; profiles."""

from opkit import GFD_PRODUCT, GKE_ACCELERATOR, REGION, fleet, fleet_spec, node

from helix_operator.api.spec import parse_spec
from helix_operator.fleet.catalog import with_profiles
from helix_operator.fleet.discovery import discover, node_facts
from helix_operator.planning.inputs import build_cluster, inputs_key, memory_shortfall
from helix_planner.profiles import load_catalog

CATALOG = load_catalog()


def _discover(nodes, spec=None, catalog=CATALOG):
    spec = parse_spec(spec or fleet_spec())
    return discover([node_facts(n) for n in nodes], spec.pools, catalog)


def test_fleet_types_and_regions_come_from_gke_and_gfd_labels() -> None:
    found = _discover(fleet())
    assert found.count_by("gpu_type") == {"A100": 8, "L4": 8, "T4": 8}
    assert found.count_by("region") == {"europe-west4": 8, "onprem-ams": 8, "us-central1": 8}
    assert {n.pool for n in found.nodes if n.gpu_type == "T4"} == {"onprem"}
    assert not found.unusable and not found.unknown_gpu and not found.short_pools


def test_karpenter_label_and_explicit_pool_settings() -> None:
    nodes = [node("k-0", {"karpenter.k8s.aws/instance-gpu-name": "a10g", "zone-group": "eu"}),
             node("x-0", {"custom/gpu": "NVIDIA-H100-80GB-HBM3", "custom/dc": "ams"})]
    spec = fleet_spec()
    spec["nodePools"] = [
        {"name": "karpenter", "selector": {"matchLabels": {"zone-group": "eu"}}, "region": "eu-1"},
        {"name": "custom", "selector": {"matchExpressions": [{"key": "custom/gpu", "operator": "Exists"}]},
         "gpuTypeLabel": "custom/gpu", "regionLabel": "custom/dc"},
    ]
    found = _discover(nodes, spec)
    assert [(n.name, n.gpu_type, n.region) for n in found.nodes] == [("k-0", "A10G", "eu-1"), ("x-0", "H100", "ams")]


def test_unusable_and_unknown_nodes_are_reported_not_planned() -> None:
    nodes = fleet(2) + [
        node("gke-a100-sick", {GKE_ACCELERATOR: "nvidia-tesla-a100", REGION: "us-central1",
                               "helix.example.com/pool": "gke"}, ready=False),
        node("dc-t4-cordoned", {GFD_PRODUCT: "Tesla-T4"}, unschedulable=True),
        node("dc-b200", {GFD_PRODUCT: "NVIDIA-B200"}),
    ]
    found = _discover(nodes)
    assert found.unusable == {"gke-a100-sick": "NotReady", "dc-t4-cordoned": "Cordoned"}
    assert found.unknown_gpu == {"dc-b200": "nvidia.com/gpu.product=NVIDIA-B200"}
    assert len(found.nodes) == 6


def test_gpu_profile_adds_a_type_and_overrides_a_builtin() -> None:
    b200 = ("b200", {"gpuType": "B200", "vram": "192GB", "memoryBandwidth": 8e12, "peakFlops": 2.25e15,
                     "labels": ["NVIDIA-B200"]})
    slow_h100 = ("h100", {"gpuType": "h100", "vram": "80GB", "memoryBandwidth": "1e12", "peakFlops": 1e14})
    catalog = with_profiles(CATALOG, [b200, slow_h100, ("broken", {"vram": "lots"})])
    assert catalog.gpu("NVIDIA-B200").vram_bytes == 192e9
    assert catalog.gpu("H100").memory_bandwidth == 1e12 and catalog.gpus["H100"].labels == ()
    assert "broken" not in catalog.gpus and CATALOG.gpu("H100").memory_bandwidth == 3.35e12
    found = _discover([node("dc-b200", {GFD_PRODUCT: "NVIDIA-B200"})], catalog=catalog)
    assert [(n.gpu_type, n.region) for n in found.nodes] == [("B200", "default")]


def test_multi_gpu_nodes_map_to_tensor_parallel_types() -> None:
    found = _discover([node("dc-t4x2", {GFD_PRODUCT: "Tesla-T4", "nvidia.com/gpu.count": "2"}),
                       node("dc-t4x4", {GFD_PRODUCT: "Tesla-T4"}, gpus=4)])
    assert [(n.gpu_type, n.gpus) for n in found.nodes] == [("T4x2", 2), ("T4x4", 4)]


def test_pool_limits() -> None:
    spec = fleet_spec()
    spec["nodePools"][0].update(maxNodes=3)
    spec["nodePools"][1].update(minNodes=10)
    found = _discover(fleet(), spec)
    assert found.count_by("pool") == {"gke": 3, "onprem": 8}
    assert found.short_pools == (("onprem", 8, 10),)


def test_fingerprint_moves_only_with_what_planning_reads() -> None:
    nodes = fleet(2)
    before = _discover(nodes).fingerprint
    nodes[0]["metadata"]["labels"]["unrelated"] = "x"
    assert _discover(nodes).fingerprint == before
    nodes[0]["metadata"]["labels"][REGION] = "us-east1"
    assert _discover(nodes).fingerprint != before


def test_planner_inputs() -> None:
    spec = parse_spec(fleet_spec())
    found = _discover(fleet(2))
    cluster = build_cluster("demo", spec, found)
    assert sorted(cluster.gpu_counts().items()) == [("A100", 2), ("L4", 2), ("T4", 2)]
    same, cross = cluster.link("gke-a100-0", "gke-a100-1"), cluster.link("gke-a100-0", "gke-l4-0")
    assert (same.bandwidth, cross.bandwidth, cross.latency) == (1.25e9, 1.25e8, 0.03)
    assert memory_shortfall(spec, found, CATALOG) is None
    key = inputs_key(spec, found, CATALOG)
    relaxed = parse_spec(fleet_spec(minImprovementPercent=50, mode="DryRun"))
    assert inputs_key(relaxed, found, CATALOG) == key, "policy settings are not planning inputs"
    assert inputs_key(parse_spec(fleet_spec(timeLimitSeconds=9)), found, CATALOG).spec != key.spec


def test_memory_shortfall_names_the_numbers() -> None:
    spec = parse_spec(fleet_spec())
    found = _discover([node("dc-t4-0", {GFD_PRODUCT: "Tesla-T4"}), node("dc-t4-1", {GFD_PRODUCT: "Tesla-T4"})])
    message = memory_shortfall(spec, found, CATALOG)
    assert message.startswith("llama2-70b needs 122.4 GB") and "2 usable nodes have 32.0 GB" in message
