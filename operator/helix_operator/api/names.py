"""API names, label and annotation keys shared by the CRDs, the builders and the handlers."""

GROUP = "helix.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

HELIXCLUSTER_KIND = "HelixCluster"
HELIXCLUSTERS = "helixclusters"
GPUPROFILE_KIND = "GPUProfile"
GPUPROFILES = "gpuprofiles"

FIELD_MANAGER = "helix-operator"

# Labels on every child: what it belongs to and what it is.
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_CLUSTER = "helix.dev/cluster"
LABEL_PLAN_HASH = "helix.dev/plan-hash"
LABEL_NODE = "helix.dev/node"
LABEL_TEMPLATE_HASH = "helix.dev/template-hash"

COMPONENT_WORKER = "worker"
COMPONENT_FRONTEND = "frontend"
COMPONENT_PLAN = "plan"
COMPONENT_TLS = "tls"  # the cluster's certificate Secret
COMPONENT_PEERS = "peers"  # the workers' peer list ConfigMap

ANNOTATION_NODE = "helix.dev/node"
ANNOTATION_LAYERS = "helix.dev/layers"
ANNOTATION_PEERS = "helix.dev/peers"  # digest of the peer list a worker pod was last told about

WORKER_HTTP_PORT = 8081  # the worker's /healthz, /readyz and /metrics
WORKER_DATA_PORT = 8082  # the worker's data-channel listener (activations from the previous stage)

PLAN_KEY = "plan.json"
PLAN_MOUNT_DIR = "/etc/helix"
PLAN_PATH = f"{PLAN_MOUNT_DIR}/{PLAN_KEY}"

PEERS_KEY = "endpoints.json"
PEERS_MOUNT_DIR = "/var/run/helix/peers"  # a directory mount (no subPath), so that the kubelet updates it
PEERS_PATH = f"{PEERS_MOUNT_DIR}/{PEERS_KEY}"
