"""Where workers and the front end read the model checkpoint (`helix ... --model DIR`).

`pvc://claim/path` mounts a PersistentVolumeClaim read-only; `file:///path` is a path already
in the image or mounted by pod template overrides; `hf://org/repo[@revision]` and
`s3://bucket/prefix` are downloaded by an init container (`helix weights fetch`) into an
emptyDir (with `spec.model.cache`, a worker's emptyDir links into huggingface_hub's cache on
that claim, which pods share): a worker only the shards holding its layers, the front end config and tokenizer,
with the credentials Secret's keys as environment variables; hf:// is fetched at the commit
the plan pinned (`planning.revision`), so every pod of a plan holds the same files. No URI makes random weights of
the model's shape with `helix model init` in an init container (same seed everywhere, so
every pod holds the same model; meant for small test models).
"""

from dataclasses import dataclass, field
from typing import Any

from helix_operator.api import weights_uri
from helix_operator.api.spec import ClusterSpec
from helix_planner.plan_format import Plan

MODELS_DIR = "/models"
VOLUME = "weights"
CACHE_DIR, CACHE_VOLUME = "/models-cache", "weights-cache"
FETCH_CONTAINER = "fetch-weights"
INIT_DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16"}


@dataclass(frozen=True)
class WeightsSource:
    path: str
    volumes: list[dict[str, Any]] = field(default_factory=list)
    mounts: list[dict[str, Any]] = field(default_factory=list)
    init_containers: list[dict[str, Any]] = field(default_factory=list)


def plan_revision(plan: Plan) -> str | None:
    """The commit a plan pinned its hf:// weights to (None: not hf://, or planned before pinning)."""
    revision = plan.model.get(weights_uri.REVISION_KEY)
    return str(revision) if revision else None


def weights_source(spec: ClusterSpec, image: str, layers: tuple[int, int] | None,
                   revision: str | None = None) -> WeightsSource:
    """The checkpoint of a pod running `image`: a worker holding `layers` [start, end), or the
    front end (None), which reads no weights; hf:// weights at `revision`, the plan's commit."""
    uri = spec.weights_uri
    if uri and weights_uri.scheme(uri) in weights_uri.REMOTE:
        return _fetched(spec, image, weights_uri.pinned(uri, revision), layers)
    if uri and uri.startswith("pvc://"):
        claim, _, sub = uri[len("pvc://"):].partition("/")
        return WeightsSource(
            path=f"{MODELS_DIR}/{sub}".rstrip("/"),
            volumes=[{"name": VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}],
            mounts=[{"name": VOLUME, "mountPath": MODELS_DIR, "readOnly": True}],
        )
    if uri and uri.startswith("file://"):
        return WeightsSource(path=uri[len("file://"):])
    return _random(spec, image)


def _fetched(spec: ClusterSpec, image: str, uri: str, layers: tuple[int, int] | None) -> WeightsSource:
    path = f"{MODELS_DIR}/checkpoint"
    part = ["--layers", f"{layers[0]}-{layers[1]}"] if layers else ["--no-weights"]
    init: dict[str, Any] = {
        "name": FETCH_CONTAINER,
        "image": image,
        "imagePullPolicy": spec.worker.image_pull_policy,
        "command": ["helix", "weights", "fetch", uri, path, *part],
        "volumeMounts": [{"name": VOLUME, "mountPath": MODELS_DIR}],
    }
    if spec.credentials_secret:
        init["envFrom"] = [{"secretRef": {"name": spec.credentials_secret}}]
    volumes = [{"name": VOLUME, "emptyDir": {}}]
    mounts = [{"name": VOLUME, "mountPath": MODELS_DIR, "readOnly": True}]
    if spec.weights_cache and layers:  # workers: the front end's config and tokenizer are not worth a claim
        init["command"] += ["--cache", CACHE_DIR]  # the checkpoint directory links into the cache's snapshot
        init["volumeMounts"].append({"name": CACHE_VOLUME, "mountPath": CACHE_DIR})
        volumes.append({"name": CACHE_VOLUME, "persistentVolumeClaim": {"claimName": spec.weights_cache}})
        mounts.append({"name": CACHE_VOLUME, "mountPath": CACHE_DIR, "readOnly": True})
    return WeightsSource(path=path, volumes=volumes, mounts=mounts, init_containers=[init])


def _random(spec: ClusterSpec, image: str) -> WeightsSource:
    model = spec.model
    path = f"{MODELS_DIR}/random"
    init = {
        "name": "random-weights",
        "image": image,
        "imagePullPolicy": spec.worker.image_pull_policy,
        "command": ["helix", "model", "init", path, "--layers", str(model.num_layers), "--hidden",
                    str(model.hidden_size), "--intermediate", str(model.intermediate_size), "--heads",
                    str(model.num_heads), "--kv-heads", str(model.num_kv_heads or model.num_heads),
                    "--dtype", INIT_DTYPES.get(model.dtype, "float16")],
        "volumeMounts": [{"name": VOLUME, "mountPath": MODELS_DIR}],
    }
    return WeightsSource(path=path, volumes=[{"name": VOLUME, "emptyDir": {}}],
                         mounts=[{"name": VOLUME, "mountPath": MODELS_DIR, "readOnly": True}], init_containers=[init])
