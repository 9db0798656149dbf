"""The CustomResourceDefinitions, generated here so that shared shapes are written once.

`crds/*.yaml` and the chart's copies are this module's output (`helix operator crds`);
a test fails when they drift. Defaults live here too and the API server applies them.
"""

from typing import Any

import yaml

from helix_operator.api import names, weights_uri
from helix_operator.api.openapi import (
    Schema,
    array,
    boolean,
    enum,
    free_form,
    int_or_string,
    integer,
    integer_map,
    map_list,
    number,
    obj,
    string,
    string_map,
)

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"
BANDWIDTH = r"^[0-9]+(\.[0-9]+)?([eE][0-9]+)?\s*([kKMGT]i?)?(bps|Bps|B/s)$"
LATENCY = r"^[0-9]+(\.[0-9]+)?(us|ms|s)$"
QUANTITY = r"^[0-9]+(\.[0-9]+)?([eE][0-9]+)?\s*([kKMGT]i?)?B?$"
PLAN_HASH = r"^[0-9a-f]{16}$"
IMAGE = r"^[^\s]+$"

BUILTIN_GPU_LABELS = (
    "nvidia.com/gpu.product (NVIDIA GPU feature discovery), cloud.google.com/gke-accelerator (GKE), "
    "karpenter.k8s.aws/instance-gpu-name and k8s.amazonaws.com/accelerator (EKS)"
)

PHASES = ["Pending", "Planning", "Deploying", "Running", "Degraded", "Failed", "Suspended", "DryRun",
          "AwaitingApproval"]
MODES = ["Auto", "DryRun", "Manual"]
OBJECTIVES = ["MaxFlow", "Serving"]
REPLAN_TRIGGERS = ["Created", "SpecChanged", "NodesChanged", "PlanInfeasible", "Approved", "CapacityDrift"]
REPLAN_OUTCOMES = ["Applied", "Proposed", "Kept", "Failed"]
ROLLOUT_STATES = ("Surging", "Switching", "Draining", "Replacing", "Complete")


def _link(what: str) -> Schema:
    return obj({"bandwidth": _bandwidth(), "latency": _latency()}, f"Links {what}.")


def _bandwidth() -> Schema:
    return string("Bits (10Gbps, 100Mbps) or bytes (1.25GB/s) per second.", pattern=BANDWIDTH)


def _latency() -> Schema:
    return string("One-way latency: 1ms, 50ms, 0.2s.", pattern=LATENCY)


def _resources() -> Schema:
    quantity = int_or_string(r"^[0-9]+(\.[0-9]+)?(m|[KMGTPE]i?|[kMGTPE])?$")
    amounts = {"type": "object", "additionalProperties": quantity}
    return obj({"limits": amounts, "requests": amounts}, "Container resources (requests and limits).")


def _plan_summary(what: str) -> Schema:
    return obj({
        "hash": string(pattern=PLAN_HASH),
        "configMap": string("ConfigMap holding the full plan document (key plan.json)."),
        "tokensPerSecond": number("Planned throughput (max flow) in tokens/s."),
        "upperBound": number("Certified upper bound on throughput in tokens/s."),
        "gap": number("(upperBound - tokensPerSecond) / upperBound."),
        "gapPercent": string("The gap as a percentage, for printing."),
        "solveSeconds": number(),
        "pipelines": integer(),
        "nodes": integer("Nodes holding layers."),
        "time": string(format="date-time"),
    }, what)


def _node_pool() -> Schema:
    expression = obj({
        "key": string(minLength=1),
        "operator": enum(["In", "NotIn", "Exists", "DoesNotExist"]),
        "values": array(string()),
    }, required=["key", "operator"])
    toleration = obj({
        "key": string(),
        "operator": enum(["Exists", "Equal"]),
        "value": string(),
        "effect": enum(["NoSchedule", "PreferNoSchedule", "NoExecute"]),
        "tolerationSeconds": integer(),
    })
    return obj({
        "name": string("Pool name, unique in the cluster.", pattern=DNS_LABEL, maxLength=40),
        "selector": obj({"matchLabels": string_map(), "matchExpressions": array(expression)},
                        "Label selector of the pool's nodes, as in a Deployment."),
        "gpuType": string("GPU type of every node in the pool: A100, L4, T4x2, or a GPUProfile's type.", minLength=1),
        "gpuTypeLabel": string(f"Node label holding the GPU type. Unset: {BUILTIN_GPU_LABELS} are tried in order.",
                               minLength=1),
        "region": string("Region of every node in the pool.", minLength=1),
        "regionLabel": string("Node label holding the region. Unset: topology.kubernetes.io/region.", minLength=1),
        "minNodes": integer("Fewer usable nodes than this sets NodesDiscovered=False and stops planning.",
                            minimum=0, default=0),
        "maxNodes": integer("Use at most this many nodes of the pool, in name order.", minimum=1),
        "tolerations": array(toleration, "Tolerations added to this pool's worker pods."),
    }, required=["name", "selector"], cel=[
        ("!(has(self.gpuType) && has(self.gpuTypeLabel))", "set either gpuType or gpuTypeLabel, not both"),
        ("!(has(self.region) && has(self.regionLabel))", "set either region or regionLabel, not both"),
        ("!has(self.maxNodes) || self.maxNodes >= self.minNodes", "maxNodes must be at least minNodes"),
    ])


def _model() -> Schema:
    custom = ["numLayers", "hiddenSize", "intermediateSize", "numHeads"]
    return obj({
        "name": string("Built-in model (llama2-70b, llama3-8b, llama3-70b, qwen2.5-72b, mistral-7b) or a custom name.",
                       minLength=1, maxLength=253, pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]*$"),
        "numLayers": integer("Custom model: transformer layers.", minimum=1, maximum=1024),
        "hiddenSize": integer("Custom model: hidden size.", minimum=64, maximum=131072),
        "intermediateSize": integer("Custom model: MLP intermediate size.", minimum=64, maximum=524288),
        "numHeads": integer("Custom model: attention heads.", minimum=1, maximum=1024),
        "numKvHeads": integer("Custom model: key/value heads (GQA). Unset: numHeads.", minimum=1, maximum=1024),
        "vocabSize": integer("Custom model: vocabulary size. Unset: 32000.", minimum=1, maximum=4194304),
        "dtype": enum(["float16", "bfloat16", "float32", "fp8", "int8"],
                      "Weight dtype. Unset: the built-in model's, else float16; a built-in model is served only "
                      "in its own."),
        "weightsUri": string("Checkpoint (config.json, tokenizer, safetensors): pvc://claim/path mounts a "
                             "PersistentVolumeClaim, file:///path is in the image or mounted by worker.template; "
                             "hf://org/repo[@revision] (Hugging Face) and s3://bucket/prefix are downloaded by an "
                             "init container into an emptyDir, each worker only the shards holding its layers; "
                             "unset means random weights of the model's shape (for tests).", maxLength=2048,
                             pattern=weights_uri.PATTERN),
        "credentialsSecret": obj({"name": string(pattern=DNS_SUBDOMAIN, maxLength=253)},
                                 "Secret whose keys the init container that downloads the weights (and no "
                                 "long-running container) gets as environment variables: HF_TOKEN for hf://; "
                                 "AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, "
                                 "AWS_SESSION_TOKEN (and AWS_ENDPOINT_URL for S3-compatible stores) for s3://.",
                                 required=["name"]),
        "cache": obj({"claimName": string(pattern=DNS_SUBDOMAIN, maxLength=253)},
                     "hf:// only: a PersistentVolumeClaim the workers' init containers keep downloaded files "
                     "in, as huggingface_hub's cache (blobs and snapshots per commit; partial files resume), "
                     "mounted read-only in the workers. A pod whose files are there downloads nothing. The "
                     "claim must be writable by uid 10001 and mountable by every worker: ReadWriteMany, or "
                     "a hostPath PersistentVolume for a cache per node.", required=["claimName"]),
    }, "A built-in model by name, or a Llama-family model described by its shape.", required=["name"], cel=[
        (" && ".join(f"has(self.{a}) == has(self.{b})" for a, b in zip(custom, custom[1:])),
         "a custom model needs all of numLayers, hiddenSize, intermediateSize and numHeads (none for a built-in one)"),
    ])


def _network() -> Schema:
    pair = obj({"from": string("One region of the pair.", minLength=1),
                "to": string("The other region of the pair.", minLength=1),
                "bandwidth": _bandwidth(), "latency": _latency(),
                "disabled": boolean("No links at all between the two regions.")}, required=["from", "to"])
    return obj({
        "intraRegion": _link("between nodes of one region"),
        "interRegion": _link("between regions"),
        "frontend": obj({"region": string("Region of the front end.", minLength=1),
                         "bandwidth": _bandwidth(), "latency": _latency()},
                        "Links to the front end: like intraRegion in its region, else like interRegion, unless given."),
        "regionPairs": array(pair, "Per region-pair overrides (both directions).", maxItems=1024),
    }, "The network model the planner's flow network is built from.")


def _planner() -> Schema:
    return obj({
        "mode": enum(MODES, "Auto applies plans; DryRun only proposes; Manual applies the proposal that "
                     "approvedPlanHash names.", default="Auto"),
        "approvedPlanHash": string("Manual mode: the proposed plan (status.proposedPlan.hash) to roll out.",
                                   pattern=PLAN_HASH),
        "throughputModel": enum(["profiled", "helix"], "Node capacity model: the project's own (profiled) or "
                                "Helix's T_i(k).", default="profiled"),
        "objective": enum(OBJECTIVES, "MaxFlow plans for the most tokens/s the flow network carries (Helix's "
                          "objective); Serving plans once per stage floor and keeps the plan with the best "
                          "simulated decode throughput (the time limit is shared among the floors).",
                          default="MaxFlow"),
        "sloTtftSeconds": number("Serving objective: the p95 time to first token the chosen plan must meet in "
                                 "simulation (if any candidate does); unset: the best decode throughput.",
                                 minimum=0.01, maximum=3600),
        "timeLimitSeconds": number("Planning time limit per plan.", minimum=0.5, maximum=3600, default=60),
        "mipGap": number("Stop planning once the certified relative gap is below this.", minimum=0, maximum=1,
                         default=0.01),
        "threads": integer("Solver threads.", minimum=1, maximum=64, default=2),
        "churnWeight": number("Penalty on moving layers when replanning (0 ignores the active plan).",
                              minimum=0, maximum=1, default=0.1),
        "debounceSeconds": number("Quiet time after a node change before replanning.", minimum=0, maximum=3600,
                                  default=15),
        "replanMinIntervalSeconds": integer("Least time between node-triggered replans unless the active plan broke.",
                                            minimum=0, maximum=86400, default=300),
        "minImprovementPercent": number("A replan is applied only if planned tokens/s grows this much "
                                        "(or the active plan broke).", minimum=0, maximum=1000, default=5),
        "observedCapacity": _observed_capacity(),
    }, default={})


def _observed_capacity() -> Schema:
    return obj({
        "enabled": boolean("Read the stages' measured step times and link throughput from the front end "
                           "(GET /v2/helix/observed), keep effective profiles in status.observedCapacity and "
                           "replan with them when they drift.", default=False),
        "driftThreshold": number("A node's observed/profiled step time (or a link's observed/described "
                                 "bandwidth) drifts when it moves by more than this share: 0.25 is 1.25x slower "
                                 "or faster.", minimum=0.01, maximum=10, default=0.25),
        "debounceSeconds": number("Drift must persist this long, seen at every poll, before it replans.",
                                  minimum=0, maximum=86400, default=60),
        "minGainPercent": number("A drift replan is applied only if the new plan beats the active one, both "
                                 "scored on the effective profiles, by this much.", minimum=0, maximum=1000,
                                 default=5),
    }, "Observed capacity: replan when measured capacity drifts from the profiles.", default={})


def _template(into: str) -> Schema:
    return free_form(f"Pod template overrides merged into {into}: metadata labels and annotations, spec "
                     "fields. Lists merge as in a strategic merge patch: containers, initContainers, volumes "
                     "and env by name, ports by containerPort, volumeMounts by mountPath (an item with the key "
                     "of a built one changes it; others are added); other lists replace. Pods meet Pod "
                     "Security \"restricted\" (uid 10001 unless given): privileged, host namespaces, hostPath "
                     "volumes, added capabilities other than NET_BIND_SERVICE, privilege escalation and running "
                     "as root are refused.")


def _worker() -> Schema:
    return obj({
        "image": string("Worker image (the front end uses it too unless frontend.image is set).", minLength=1,
                        pattern=IMAGE),
        "imagePullPolicy": enum(["Always", "IfNotPresent", "Never"], default="IfNotPresent"),
        "port": integer("Stage gRPC port of the worker pods.", minimum=1, maximum=65535, default=50051),
        "gpuResourceName": string("Extended resource the device plugin hands out GPUs as.", default="nvidia.com/gpu",
                                  pattern=r"^([a-z0-9.-]+/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$"),
        "resources": _resources(),
        "env": array(free_form() | {"required": ["name"], "properties": {"name": string(minLength=1)}},
                     "Environment variables of the worker containers, as in a Pod (HELIX_* settings: see "
                     "docs/configuration.md)."),
        "template": _template("every worker pod"),
    }, required=["image"])


def _frontend() -> Schema:
    service = obj({
        "type": enum(["ClusterIP", "NodePort", "LoadBalancer"], default="ClusterIP"),
        "httpPort": integer("OpenAI HTTP port of the Service.", minimum=1, maximum=65535, default=8000),
        "grpcPort": integer("KServe v2 gRPC port of the Service.", minimum=1, maximum=65535, default=8001),
        "annotations": string_map("Annotations of the Service (for a cloud load balancer, say)."),
    }, "The front end's Service.", default={})
    return obj({
        "replicas": integer("Front-end pods; each admits requests into the KV room the stages report left.",
                            minimum=0, maximum=100, default=1),
        "image": string("Defaults to the worker image.", pattern=IMAGE),
        "routing": enum(["adaptive", "iwrr"], "How requests are routed (HELIX_ROUTING): adaptive, by expected "
                        "completion time over routes composed across the plan's pipelines, or iwrr, interleaved "
                        "weighted round robin over the pipelines by planned flow.", default="adaptive"),
        "resources": _resources(),
        "service": service,
        "template": _template("the front-end Deployment's pod template"),
    }, default={})


def _rollout() -> Schema:
    return obj({
        "maxSurgeNodes": integer("Most worker pods starting at once while something older serves: new-plan "
                                 "pods on free nodes before old ones go, or, after a worker spec change, nodes "
                                 "whose pod is replaced (a batch keeps a pipeline whole where the plan allows).",
                                 minimum=1, maximum=10000, default=8),
        "drainTimeoutSeconds": integer("Grace period old workers get to finish in-flight requests.", minimum=0,
                                       maximum=86400, default=300),
    }, default={})


def _liveness() -> Schema:
    return obj({
        "heartbeatSeconds": number("How often the front end asks every stage for its health, and how often every "
                                   "link (front end to stage, stage to stage) pings its peer "
                                   "(HELIX_HEARTBEAT_SECONDS).", minimum=0.1, maximum=60, default=1),
        "hungSeconds": number("A stage that does not answer a heartbeat within this, or holds work without finishing "
                              "a step for this long, and a link whose ping goes unanswered this long, take their "
                              "pipelines out of rotation within heartbeatSeconds + hungSeconds; their requests "
                              "re-prefill on other pipelines (HELIX_HUNG_SECONDS).", minimum=0.5, maximum=600,
                              default=10),
        "leaseSeconds": number("A stage frees the KV cache of a front end that has had no stream to it for this "
                               "long (HELIX_LEASE_SECONDS).", minimum=1, maximum=86400, default=30),
    }, "How fast the data plane gives up on a stage, a link or a front end that stopped answering. A change "
       "replaces the worker pods (in batches) and rolls the front end.", default={}, cel=[LEASE_AFTER_HUNG])


# A front end cut off from a stage notices within heartbeat + hung seconds and moves its requests away; a
# shorter lease would free them first, and a request's next step would wait out the step timeout instead.
LEASE_AFTER_HUNG = ("self.leaseSeconds > self.heartbeatSeconds + self.hungSeconds",
                    "leaseSeconds must exceed heartbeatSeconds + hungSeconds, so that a front end cut off from a "
                    "stage moves its requests away before the stage frees their KV cache")


def _security() -> Schema:
    def secret(description: str, **extra: Schema) -> Schema:
        return obj({"name": string(pattern=DNS_SUBDOMAIN, maxLength=253), **extra}, description, required=["name"])

    return obj({
        "tlsSecret": secret("Secret of the cluster's mutual TLS between the front end and the workers, in "
                            "cert-manager's layout (tls.crt, tls.key, ca.crt): a certificate for server and client "
                            "auth with helix-member among its dnsNames. Unset: the operator issues a self-signed CA "
                            "and certificate into <cluster>-tls."),
        "apiKeysSecret": secret("Secret holding client API keys, one a line: the front end then requires "
                                "`Authorization: Bearer <key>` (OpenAI API) or the same `authorization` metadata "
                                "(KServe gRPC); health, readiness and metrics stay open.",
                                key=string("Key of the file in the Secret.", default="api-keys", minLength=1)),
        "clientTlsSecret": secret("kubernetes.io/tls Secret (tls.crt, tls.key) the front end serves its client "
                                  "endpoints (HTTP and KServe gRPC) with. Unset: they serve plaintext."),
    }, "Who may talk to the cluster. The stage network always uses mutual TLS.", default={})


def helixcluster_spec_schema() -> Schema:
    return obj({
        "suspend": boolean("Delete worker pods and scale the front end to zero; keep the plan.", default=False),
        "model": _model(),
        "nodePools": map_list(_node_pool(), ["name"], minItems=1, maxItems=32),
        "network": _network(),
        "planner": _planner(),
        "worker": _worker(),
        "frontend": _frontend(),
        "rollout": _rollout(),
        "security": _security(),
        "liveness": _liveness(),
    }, required=["model", "nodePools", "worker"])


def helixcluster_status_schema() -> Schema:
    condition = obj({
        "type": string(),
        "status": enum(["True", "False", "Unknown"]),
        "reason": string(),
        "message": string(),
        "lastTransitionTime": string(format="date-time"),
        "observedGeneration": integer(),
    }, required=["type", "status", "reason", "message", "lastTransitionTime"])
    return obj({
        "observedGeneration": integer(),
        "phase": enum(PHASES),
        "conditions": map_list(condition, ["type"]),
        "nodes": obj({"discovered": integer(), "used": integer(), "byGpuType": integer_map(),
                      "byRegion": integer_map()}),
        "model": obj({"revision": string("The commit of hf:// weights every pod of the active plan fetches: "
                                         "resolved from spec.model.weightsUri when the plan was made, and "
                                         "kept until the next replan.")}),
        "url": string("The front end's OpenAI HTTP address inside the cluster, http(s)://<service>.<namespace>"
                      ".svc:<port> (https with spec.security.clientTlsSecret); KServe gRPC is on the same "
                      "Service's grpc port."),
        "activePlan": _plan_summary("The plan the workers run."),
        "proposedPlan": _plan_summary("A plan not (yet) applied: DryRun, Manual, or kept for too small a gain."),
        "lastReplan": obj({
            "time": string(format="date-time"),
            "trigger": enum(REPLAN_TRIGGERS),
            "outcome": enum(REPLAN_OUTCOMES),
            "fromTokensPerSecond": number(),
            "toTokensPerSecond": number(),
            "message": string(),
            "inputs": string("Fingerprint of what was planned for; planning reruns only when it changes."),
        }),
        "rollout": obj({
            "targetHash": string(),
            "state": enum(list(ROLLOUT_STATES)),
            "desiredWorkers": integer(),
            "readyWorkers": integer(),
            "drainingWorkers": integer(),
        }),
        "observedTokensPerSecond": number("Generated tokens/s the front end served lately: the increase of "
                                          "each ready front-end pod's vllm:generation_tokens counter between "
                                          "two reads by the operator, summed over the pods."),
        "observedAt": string("When observedTokensPerSecond was last measured.", format="date-time"),
        "observedCapacity": obj({
            "time": string("When the front end's observed-capacity document was read.", format="date-time"),
            "planHash": string("The plan the stages ran when they measured."),
            "nodes": {"type": "object", "description": "Per node with enough recent steps: slowdown, its "
                      "observed step time over its GPU type's profile (2 is twice as slow).",
                      "additionalProperties": obj({"slowdown": number()})},
            "links": {"type": "object", "description": "Per link \"from>to\" with enough timed frames: "
                      "bandwidthShare, its observed over its described bandwidth (at most 1).",
                      "additionalProperties": obj({"bandwidthShare": number()})},
        }, "Effective profiles (spec.planner.observedCapacity): what the stages measure, against the catalog."),
    })


def _printer_columns() -> list[dict[str, Any]]:
    return [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
        {"name": "Nodes", "type": "integer", "jsonPath": ".status.nodes.used",
         "description": "GPU nodes running workers of the active plan"},
        {"name": "Pipelines", "type": "integer", "jsonPath": ".status.activePlan.pipelines"},
        {"name": "Planned tok/s", "type": "number", "jsonPath": ".status.activePlan.tokensPerSecond"},
        {"name": "Gap", "type": "string", "jsonPath": ".status.activePlan.gapPercent"},
        {"name": "URL", "type": "string", "jsonPath": ".status.url",
         "description": "the front end's OpenAI HTTP address inside the cluster"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        {"name": "Plan", "type": "string", "jsonPath": ".status.activePlan.hash", "priority": 1},
        {"name": "Observed tok/s", "type": "number", "jsonPath": ".status.observedTokensPerSecond", "priority": 1},
    ]


def gpuprofile_spec_schema() -> Schema:
    amount = int_or_string(f"{QUANTITY}|{BANDWIDTH}", "Bytes or bytes/s: 80GB, 80GiB, 3.35e12, 25Gbps.")
    return obj({
        "gpuType": string("GPU type name used by node pools and plans; defaults to metadata.name. "
                          "Naming a built-in type (A100, H100, ...) overrides it.", minLength=1, maxLength=63),
        "vram": amount,
        "memoryBandwidth": amount,
        "peakFlops": number("Dense fp16/bf16 FLOP/s of the whole node.", minimum=1),
        "nic": amount,
        "gpus": integer("GPUs per node, run tensor-parallel inside the node.", minimum=1, maximum=64, default=1),
        "labels": array(string(minLength=1), "Node-label values that identify this type (nvidia.com/gpu.product, "
                        "cloud.google.com/gke-accelerator, ...)."),
    }, required=["vram", "memoryBandwidth", "peakFlops"])


def _crd(kind: str, plural: str, scope: str, short: list[str], spec: Schema, status: Schema | None,
         columns: list[dict[str, Any]]) -> dict[str, Any]:
    properties: dict[str, Schema] = {"apiVersion": string(), "kind": string(), "metadata": {"type": "object"},
                                     "spec": spec}
    version: dict[str, Any] = {"name": names.VERSION, "served": True, "storage": True}
    if status is not None:
        properties["status"] = status
        version["subresources"] = {"status": {}}
    version["additionalPrinterColumns"] = columns
    version["schema"] = {"openAPIV3Schema": obj(properties, required=["spec"])}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{plural}.{names.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "helix"},
            # Helm must not delete CRDs (and with them every HelixCluster) on uninstall.
            "annotations": {"helm.sh/resource-policy": "keep"},
        },
        "spec": {
            "group": names.GROUP,
            "scope": scope,
            "names": {"kind": kind, "listKind": f"{kind}List", "plural": plural, "singular": kind.lower(),
                      "shortNames": short, "categories": ["helix"]},
            "versions": [version],
        },
    }


def helixcluster_crd() -> dict[str, Any]:
    return _crd(names.HELIXCLUSTER_KIND, names.HELIXCLUSTERS, "Namespaced", ["hxc"], helixcluster_spec_schema(),
                helixcluster_status_schema(), _printer_columns())


def gpuprofile_crd() -> dict[str, Any]:
    columns = [
        {"name": "GPU type", "type": "string", "jsonPath": ".spec.gpuType"},
        {"name": "VRAM", "type": "string", "jsonPath": ".spec.vram"},
        {"name": "GPUs", "type": "integer", "jsonPath": ".spec.gpus"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]
    return _crd(names.GPUPROFILE_KIND, names.GPUPROFILES, "Cluster", ["gpup"], gpuprofile_spec_schema(), None,
                columns)


def kopf_peering_crds() -> list[dict[str, Any]]:
    """kopf's peering resources: two operator replicas never handle one object at once."""
    status = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    return [
        {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.kopf.dev", "annotations": {"helm.sh/resource-policy": "keep"}},
            "spec": {
                "group": "kopf.dev",
                "scope": scope,
                "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
                "versions": [{"name": "v1", "served": True, "storage": True, "schema": {
                    "openAPIV3Schema": {"type": "object", "properties": {"status": status}}}}],
            },
        }
        for kind, plural, scope in (("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
                                    ("KopfPeering", "kopfpeerings", "Namespaced"))
    ]


def all_crds() -> dict[str, list[dict[str, Any]]]:
    """File name -> its CRDs, as written to `crds/`."""
    return {
        f"{names.GROUP}_{names.HELIXCLUSTERS}.yaml": [helixcluster_crd()],
        f"{names.GROUP}_{names.GPUPROFILES}.yaml": [gpuprofile_crd()],
        "kopf.dev_peerings.yaml": kopf_peering_crds(),
    }


def render(documents: list[dict[str, Any]]) -> str:
    """YAML as committed: a header saying where it comes from, then the documents."""
    header = "# Generated by `helix operator crds` from helix_operator/api/crd.py: edit that, not this file.\n"
    return header + yaml.safe_dump_all(documents, sort_keys=False, width=120)
