"""The HelixCluster spec as typed values, with the checks a CRD schema cannot express.

`parse_spec` raises `SpecError` naming the field and what to change; the handlers turn it
into `kopf.PermanentError` (no retries: only a new spec can fix it).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from helix_operator.api import mergekeys, names, podsecurity, weights_uri
from helix_operator.api.crd import helixcluster_spec_schema
from helix_operator.api.defaults import apply_defaults
from helix_planner.errors import PlanningError
from helix_planner.models import MODEL_KEYS, ModelSpec, get_model, model_from_mapping
from helix_planner.units import parse_quantity

MODEL_SHAPE = ("numLayers", "hiddenSize", "intermediateSize", "numHeads")


class SpecError(ValueError):
    """A spec no controller loop can act on; `str()` names the field and the fix."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path


@dataclass(frozen=True)
class Requirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class PoolSpec:
    name: str
    match_labels: Mapping[str, str]
    match_expressions: tuple[Requirement, ...]
    gpu_type: str | None = None
    gpu_type_label: str | None = None
    region: str | None = None
    region_label: str | None = None
    min_nodes: int = 0
    max_nodes: int | None = None
    tolerations: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class ObservedCapacitySpec:
    enabled: bool = False
    drift_threshold: float = 0.25
    debounce: float = 60.0
    min_gain_percent: float = 5.0


@dataclass(frozen=True)
class PlannerSpec:
    mode: str
    approved_plan_hash: str | None
    throughput_model: str
    objective: str
    slo_ttft: float | None
    time_limit: float
    mip_gap: float
    threads: int
    churn_weight: float
    debounce: float
    replan_min_interval: float
    min_improvement_percent: float
    observed_capacity: ObservedCapacitySpec = ObservedCapacitySpec()


@dataclass(frozen=True)
class WorkerSpec:
    image: str
    image_pull_policy: str
    port: int
    gpu_resource_name: str
    resources: Mapping[str, Any]
    env: tuple[Mapping[str, Any], ...]
    template: Mapping[str, Any]


@dataclass(frozen=True)
class FrontendSpec:
    replicas: int
    image: str
    routing: str
    resources: Mapping[str, Any]
    service_type: str
    http_port: int
    grpc_port: int
    service_annotations: Mapping[str, str]
    template: Mapping[str, Any]


@dataclass(frozen=True)
class RolloutSpec:
    max_surge_nodes: int
    drain_timeout: int


@dataclass(frozen=True)
class SecuritySpec:
    """Secrets by name: the cluster's TLS (None: the operator issues one), the front end's API
    keys (the file `api_keys_key` in that Secret) and its TLS for clients."""

    tls_secret: str | None = None
    api_keys_secret: str | None = None
    api_keys_key: str = "api-keys"
    client_tls_secret: str | None = None


@dataclass(frozen=True)
class LivenessSpec:
    """The data plane's liveness bounds in seconds (HELIX_HEARTBEAT_SECONDS, HELIX_HUNG_SECONDS,
    HELIX_LEASE_SECONDS in the pods); the defaults are the CRD's and the data plane's."""

    heartbeat: float = 1.0
    hung: float = 10.0
    lease: float = 30.0

    def env(self, *, lease: bool) -> list[dict[str, str]]:
        """The pods' variables; the lease is the workers' alone (stages keep it)."""
        values = {"HELIX_HEARTBEAT_SECONDS": self.heartbeat, "HELIX_HUNG_SECONDS": self.hung}
        if lease:
            values["HELIX_LEASE_SECONDS"] = self.lease
        return [{"name": name, "value": f"{value:g}"} for name, value in values.items()]


@dataclass(frozen=True)
class ClusterSpec:
    model: ModelSpec
    weights_uri: str | None
    credentials_secret: str | None
    pools: tuple[PoolSpec, ...]
    network: Mapping[str, Any]
    planner: PlannerSpec
    worker: WorkerSpec
    frontend: FrontendSpec
    rollout: RolloutSpec
    suspend: bool = False
    security: SecuritySpec = SecuritySpec()
    weights_cache: str | None = None  # PersistentVolumeClaim the workers keep hf:// files in (huggingface_hub's cache)
    liveness: LivenessSpec = LivenessSpec()


def parse_spec(spec: Mapping[str, Any]) -> ClusterSpec:
    """Default, check and type a HelixCluster spec."""
    data = apply_defaults(helixcluster_spec_schema(), _plain(spec))
    for key in ("model", "nodePools", "worker"):
        if key not in data:
            raise SpecError(f"spec.{key}", "is required")
    worker = _worker(data["worker"])
    return ClusterSpec(
        model=_model(data["model"]),
        weights_uri=_weights_uri(data["model"].get("weightsUri")),
        weights_cache=_weights_cache(data["model"]),
        credentials_secret=(data["model"].get("credentialsSecret") or {}).get("name"),
        pools=_pools(data["nodePools"]),
        network=_network(data.get("network") or {}),
        planner=_planner(data["planner"]),
        worker=worker,
        frontend=_frontend(data["frontend"], worker.image),
        rollout=RolloutSpec(int(data["rollout"]["maxSurgeNodes"]), int(data["rollout"]["drainTimeoutSeconds"])),
        suspend=bool(data["suspend"]),
        security=_security(data["security"]),
        liveness=_liveness(data["liveness"]),
    )


def _security(data: dict[str, Any]) -> SecuritySpec:
    keys = data.get("apiKeysSecret") or {}
    return SecuritySpec(tls_secret=(data.get("tlsSecret") or {}).get("name"), api_keys_secret=keys.get("name"),
                        api_keys_key=keys.get("key", "api-keys"),
                        client_tls_secret=(data.get("clientTlsSecret") or {}).get("name"))


def _liveness(data: dict[str, Any]) -> LivenessSpec:
    liveness = LivenessSpec(float(data["heartbeatSeconds"]), float(data["hungSeconds"]), float(data["leaseSeconds"]))
    if liveness.lease <= liveness.heartbeat + liveness.hung:
        raise SpecError("spec.liveness.leaseSeconds",
                        f"{liveness.lease:g} must exceed heartbeatSeconds + hungSeconds "
                        f"({liveness.heartbeat + liveness.hung:g}): a front end cut off from a stage moves its "
                        "requests away within that time, and the stage must not free their KV cache first")
    return liveness


def _plain(value: Any) -> Any:
    """Deep copy of kopf's read-only views into plain dicts and lists."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _model(data: dict[str, Any]) -> ModelSpec:
    given = [key for key in MODEL_SHAPE if key in data]
    if given and len(given) != len(MODEL_SHAPE):
        missing = ", ".join(key for key in MODEL_SHAPE if key not in data)
        raise SpecError("spec.model", f"a custom model needs all of {', '.join(MODEL_SHAPE)}; missing {missing}")
    try:
        if given:
            shape = {k: v for k, v in data.items() if k in MODEL_KEYS}  # the rest says where weights come from
            return model_from_mapping(shape)
        model = get_model(str(data["name"]))
    except PlanningError as err:
        raise SpecError("spec.model.name", str(err)) from None
    if data.get("dtype") and data["dtype"] != model.dtype:
        raise SpecError("spec.model.dtype", f"built-in model {model.name} is {model.dtype}; describe the model's "
                        f"shape (numLayers, hiddenSize, intermediateSize, numHeads) to serve it in {data['dtype']}")
    return model


def _weights_uri(uri: str | None) -> str | None:
    """The URI as given, if it has a form the pods can read (the CRD pattern says the same)."""
    if uri is not None and (problem := weights_uri.problem(uri)):
        raise SpecError("spec.model.weightsUri", problem)
    return uri


def _weights_cache(model: Mapping[str, Any]) -> str | None:
    """`cache.claimName`, which only hf:// weights use (the cache has huggingface_hub's layout)."""
    claim = (model.get("cache") or {}).get("claimName")
    if claim and weights_uri.scheme(model.get("weightsUri") or "") != "hf":
        raise SpecError("spec.model.cache", "caches hf:// weights only: set weightsUri to hf://ORG/REPO[@REVISION] "
                                            "or remove cache")
    return claim or None


def _pools(items: list[dict[str, Any]]) -> tuple[PoolSpec, ...]:
    if not items:
        raise SpecError("spec.nodePools", "needs at least one pool")
    pools, seen = [], set()
    for i, item in enumerate(items):
        where = f"spec.nodePools[{i}]"
        name = str(item.get("name", ""))
        if name in seen:
            raise SpecError(f"{where}.name", f"pool name {name!r} is used twice")
        seen.add(name)
        for a, b in (("gpuType", "gpuTypeLabel"), ("region", "regionLabel")):
            if a in item and b in item:
                raise SpecError(where, f"set either {a} or {b}, not both")
        if "maxNodes" in item and item["maxNodes"] < item["minNodes"]:
            raise SpecError(f"{where}.maxNodes", f"{item['maxNodes']} is below minNodes {item['minNodes']}")
        selector = item.get("selector") or {}
        if not selector.get("matchLabels") and not selector.get("matchExpressions"):
            raise SpecError(f"{where}.selector", "is empty and would match every node; give matchLabels or "
                            "matchExpressions (e.g. {key: nvidia.com/gpu.product, operator: Exists})")
        expressions = tuple(Requirement(e["key"], e["operator"], tuple(e.get("values") or ()))
                            for e in selector.get("matchExpressions") or [])
        for j, req in enumerate(expressions):
            if (req.operator in ("In", "NotIn")) != bool(req.values):
                raise SpecError(f"{where}.selector.matchExpressions[{j}].values",
                                "In and NotIn need values; Exists and DoesNotExist take none")
        pools.append(PoolSpec(
            name=name, match_labels=dict(selector.get("matchLabels") or {}), match_expressions=expressions,
            gpu_type=item.get("gpuType"), gpu_type_label=item.get("gpuTypeLabel"), region=item.get("region"),
            region_label=item.get("regionLabel"), min_nodes=int(item["minNodes"]), max_nodes=item.get("maxNodes"),
            tolerations=tuple(item.get("tolerations") or ()),
        ))
    return tuple(pools)


def _network(data: dict[str, Any]) -> dict[str, Any]:
    """Check every quantity now, so that the planner's parse never fails later."""
    links = [(f"spec.network.{k}", data[k]) for k in ("intraRegion", "interRegion", "frontend") if k in data]
    links += [(f"spec.network.regionPairs[{i}]", p) for i, p in enumerate(data.get("regionPairs") or [])]
    for where, link in links:
        for key in ("bandwidth", "latency"):
            if key in link:
                try:
                    value = parse_quantity(link[key])
                except ValueError as err:
                    raise SpecError(f"{where}.{key}", str(err)) from None
                if key == "bandwidth" and value <= 0:
                    raise SpecError(f"{where}.bandwidth", "must be positive; to cut two regions apart give their "
                                    "regionPairs entry `disabled: true`")
    return data


def _planner(data: dict[str, Any]) -> PlannerSpec:
    return PlannerSpec(
        mode=data["mode"], approved_plan_hash=data.get("approvedPlanHash"), throughput_model=data["throughputModel"],
        objective=data["objective"], slo_ttft=data.get("sloTtftSeconds"), time_limit=float(data["timeLimitSeconds"]),
        mip_gap=float(data["mipGap"]), threads=int(data["threads"]),
        churn_weight=float(data["churnWeight"]), debounce=float(data["debounceSeconds"]),
        replan_min_interval=float(data["replanMinIntervalSeconds"]),
        min_improvement_percent=float(data["minImprovementPercent"]),
        observed_capacity=ObservedCapacitySpec(
            bool(data["observedCapacity"]["enabled"]), float(data["observedCapacity"]["driftThreshold"]),
            float(data["observedCapacity"]["debounceSeconds"]), float(data["observedCapacity"]["minGainPercent"])),
    )


def _worker(data: dict[str, Any]) -> WorkerSpec:
    if not data.get("image"):
        raise SpecError("spec.worker.image", "is required: the worker image (e.g. ghcr.io/helix-k8s/worker:0.1.0)")
    if int(data["port"]) in (names.WORKER_HTTP_PORT, names.WORKER_DATA_PORT):
        raise SpecError("spec.worker.port", f"{names.WORKER_HTTP_PORT} and {names.WORKER_DATA_PORT} are the worker's "
                                            "health/metrics and data-channel ports; choose another gRPC port")
    return WorkerSpec(
        image=data["image"], image_pull_policy=data["imagePullPolicy"], port=int(data["port"]),
        gpu_resource_name=data["gpuResourceName"], resources=data.get("resources") or {},
        env=tuple(data.get("env") or ()), template=_template(data.get("template") or {}, "spec.worker.template"),
    )


def _frontend(data: dict[str, Any], worker_image: str) -> FrontendSpec:
    service = data["service"]
    return FrontendSpec(
        replicas=int(data["replicas"]), image=data.get("image") or worker_image, routing=data["routing"],
        resources=data.get("resources") or {},
        service_type=service["type"], http_port=int(service["httpPort"]), grpc_port=int(service["grpcPort"]),
        service_annotations=service.get("annotations") or {},
        template=_template(data.get("template") or {}, "spec.frontend.template"),
    )


def _template(template: dict[str, Any], where: str) -> dict[str, Any]:
    """Pod template overrides, refused where they would break Pod Security "restricted" or name no
    item of a list that merges by key."""
    if problem := podsecurity.template_problem(template, where):
        raise SpecError(*problem)
    if problem := next(mergekeys.missing_merge_keys(template, where), None):
        raise SpecError(*problem)
    return template
