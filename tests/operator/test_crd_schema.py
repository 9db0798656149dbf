"""The CRDs: generated files are current, examples validate, bad specs fail field by field."""

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from opkit import REPO, KubeYamlLoader, load_documents, pruned_fields

from helix_operator.api import crd
from helix_operator.api.spec import SpecError, parse_spec

EXAMPLES = sorted((REPO / "operator" / "examples").glob("*.yaml"))


def _schema(kind: str) -> dict[str, Any]:
    crds = {c["spec"]["names"]["kind"]: c for docs in crd.all_crds().values() for c in docs}
    return crds[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def _kube_integer(_checker: Any, value: Any) -> bool:
    """The API server takes 8e12 as an integer (a JSON number without a fraction)."""
    return (isinstance(value, int) and not isinstance(value, bool)) or (isinstance(value, float) and value.is_integer())


# OpenAPI v3.0 (what CRDs speak) is closest to JSON Schema draft 4.
KubeValidator = jsonschema.validators.extend(
    jsonschema.Draft4Validator, type_checker=jsonschema.Draft4Validator.TYPE_CHECKER.redefine("integer", _kube_integer))


def _errors(kind: str, obj: dict[str, Any]) -> list[tuple[str, str]]:
    """(field path, message) of every violation, as the API server would list them."""
    validator = KubeValidator(_schema(kind))
    return [(".".join(str(p) for p in err.absolute_path), err.message) for err in validator.iter_errors(obj)]


@pytest.mark.parametrize("name", sorted(crd.all_crds()))
def test_committed_crds_are_generated_from_crd_module(name: str) -> None:
    committed = (REPO / "crds" / name).read_text()
    assert committed == crd.render(crd.all_crds()[name]), "run `helix operator crds --out crds` and commit"


def test_schemas_are_structural() -> None:
    """Kubernetes rejects a CRD whose every node does not say its type (or opt out of typing)."""
    def walk(schema: dict[str, Any], path: str) -> list[str]:
        bad = [] if ("type" in schema or schema.get("x-kubernetes-int-or-string")) else [path]
        for key, sub in schema.get("properties", {}).items():
            bad += walk(sub, f"{path}.{key}")
        if "items" in schema:
            bad += walk(schema["items"], f"{path}[]")
        if isinstance(schema.get("additionalProperties"), dict):
            bad += walk(schema["additionalProperties"], f"{path}{{}}")
        return bad

    for kind in ("HelixCluster", "GPUProfile"):
        assert walk(_schema(kind), kind) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate_against_crd(path: Path) -> None:
    documents = load_documents(path)
    assert documents
    for doc in documents:
        assert _errors(doc["kind"], doc) == []
        if doc["kind"] == "HelixCluster":
            assert parse_spec(doc["spec"]).pools


def test_minimal_example_gets_crd_defaults() -> None:
    spec = parse_spec(load_documents(REPO / "operator" / "examples" / "helixcluster-minimal.yaml")[0]["spec"])
    assert (spec.planner.mode, spec.planner.time_limit, spec.planner.min_improvement_percent) == ("Auto", 60.0, 5.0)
    assert (spec.worker.port, spec.frontend.replicas, spec.frontend.service_type) == (50051, 1, "ClusterIP")
    assert (spec.rollout.max_surge_nodes, spec.rollout.drain_timeout) == (8, 300)
    assert spec.frontend.image == spec.worker.image
    assert spec.model.num_layers == 32
    assert (spec.liveness.heartbeat, spec.liveness.hung, spec.liveness.lease) == (1.0, 10.0, 30.0)


def _minimal() -> dict[str, Any]:
    return yaml.safe_load((REPO / "operator" / "examples" / "helixcluster-minimal.yaml").read_text())


BAD_SPECS = [
    ("missing model", lambda s: s.pop("model"), "spec", "'model' is a required property"),
    ("no pools", lambda s: s.update(nodePools=[]), "spec.nodePools", "non-empty"),
    ("bad mode", lambda s: s.update(planner={"mode": "Fast"}), "spec.planner.mode", "'Fast' is not one of"),
    ("time limit too small", lambda s: s.update(planner={"timeLimitSeconds": 0}), "spec.planner.timeLimitSeconds",
     "less than the minimum of 0.5"),
    ("port out of range", lambda s: s["worker"].update(port=70000), "spec.worker.port", "greater than the maximum"),
    ("pool name", lambda s: s["nodePools"][0].update(name="GPU_Pool"), "spec.nodePools.0.name", "does not match"),
    ("bandwidth unit", lambda s: s.update(network={"intraRegion": {"bandwidth": "fast"}}),
     "spec.network.intraRegion.bandwidth", "does not match"),
    ("weights scheme", lambda s: s["model"].update(weightsUri="ftp://x"), "spec.model.weightsUri", "does not match"),
    ("hf repo id", lambda s: s["model"].update(weightsUri="hf://meta llama/x"), "spec.model.weightsUri",
     "does not match"),
    ("s3 bucket name", lambda s: s["model"].update(weightsUri="s3://My_Bucket/llama"), "spec.model.weightsUri",
     "does not match"),
    ("negative minNodes", lambda s: s["nodePools"][0].update(minNodes=-1), "spec.nodePools.0.minNodes",
     "less than the minimum"),
    ("selector operator", lambda s: s["nodePools"][0]["selector"]["matchExpressions"][0].update(operator="Has"),
     "spec.nodePools.0.selector.matchExpressions.0.operator", "'Has' is not one of"),
    ("service type", lambda s: s.update(frontend={"service": {"type": "Ingress"}}), "spec.frontend.service.type",
     "'Ingress' is not one of"),
    ("approved hash", lambda s: s.update(planner={"approvedPlanHash": "xyz"}), "spec.planner.approvedPlanHash",
     "does not match"),
    ("heartbeat too short", lambda s: s.update(liveness={"heartbeatSeconds": 0.05}), "spec.liveness.heartbeatSeconds",
     "less than the minimum of 0.1"),
    ("hung time too long", lambda s: s.update(liveness={"hungSeconds": 3600}), "spec.liveness.hungSeconds",
     "greater than the maximum of 600"),
    ("lease as text", lambda s: s.update(liveness={"leaseSeconds": "30s"}), "spec.liveness.leaseSeconds",
     "is not of type 'number'"),
]


@pytest.mark.parametrize("case", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_bad_specs_are_rejected_with_field_paths(case) -> None:
    _, mutate, path, message = case
    obj = _minimal()
    mutate(obj["spec"])
    errors = _errors("HelixCluster", obj)
    assert any(p == path and message in m for p, m in errors), errors


CROSS_FIELD = [
    ("gpuType and gpuTypeLabel", lambda s: s["nodePools"][0].update(gpuType="A100", gpuTypeLabel="x"),
     "spec.nodePools[0]", "either gpuType or gpuTypeLabel"),
    ("maxNodes below minNodes", lambda s: s["nodePools"][0].update(minNodes=3, maxNodes=2),
     "spec.nodePools[0].maxNodes", "below minNodes"),
    ("half a custom model", lambda s: s["model"].update(name="mine", numLayers=40), "spec.model",
     "missing hiddenSize, intermediateSize, numHeads"),
    ("unknown built-in model", lambda s: s["model"].update(name="gpt-5"), "spec.model.name", "unknown model"),
    ("dtype of a built-in", lambda s: s["model"].update(dtype="fp8"), "spec.model.dtype", "describe the model's shape"),
    ("empty selector", lambda s: s["nodePools"][0].update(selector={}), "spec.nodePools[0].selector",
     "would match every node"),
    ("In without values", lambda s: s["nodePools"][0]["selector"]["matchExpressions"][0].update(operator="In"),
     "spec.nodePools[0].selector.matchExpressions[0].values", "need values"),
    ("duplicate pools", lambda s: s["nodePools"].append(copy.deepcopy(s["nodePools"][0])), "spec.nodePools[1].name",
     "used twice"),
    ("worker port on the health port", lambda s: s["worker"].update(port=8081), "spec.worker.port",
     "health/metrics and data-channel ports"),
    ("worker port on the data port", lambda s: s["worker"].update(port=8082), "spec.worker.port",
     "choose another gRPC port"),
    ("weights scheme", lambda s: s["model"].update(weightsUri="gs://bucket/llama"), "spec.model.weightsUri",
     "no supported scheme: use pvc://CLAIM/PATH"),
    ("hf repo id", lambda s: s["model"].update(weightsUri="hf://org/repo/extra"), "spec.model.weightsUri",
     "not a valid hf:// URI: use hf://ORG/REPO[@REVISION]"),
    ("s3 bucket", lambda s: s["model"].update(weightsUri="s3://ab"), "spec.model.weightsUri",
     "bucket name of 3-63 lowercase letters"),
    ("lease within the hung bound", lambda s: s.update(liveness={"hungSeconds": 30}), "spec.liveness.leaseSeconds",
     "30 must exceed heartbeatSeconds + hungSeconds (31)"),
]


GOOD_URIS = ["pvc://weights/llama", "file:///models/llama", "hf://gpt2", "hf://meta-llama/Llama-3.1-8B",
             "hf://Qwen/Qwen2.5-72B@main", "hf://org/repo@refs/pr/1", "hf://org/repo@0123abcd", "s3://models",
             "s3://my.models-bucket/llama/3.1-8b/"]


@pytest.mark.parametrize("uri", GOOD_URIS)
def test_weights_uris_the_schema_and_the_operator_accept(uri: str) -> None:
    obj = _minimal()
    obj["spec"]["model"]["weightsUri"] = uri
    assert _errors("HelixCluster", obj) == []
    assert parse_spec(obj["spec"]).weights_uri == uri


@pytest.mark.parametrize("case", CROSS_FIELD, ids=[c[0] for c in CROSS_FIELD])
def test_operator_rejects_what_the_schema_cannot(case) -> None:
    _, mutate, path, message = case
    spec = _minimal()["spec"]
    mutate(spec)
    with pytest.raises(SpecError) as err:
        parse_spec(spec)
    assert err.value.path == path and message in str(err.value)


def test_cel_rules_accompany_cross_field_checks() -> None:
    """The API server checks the same cross-field rules when it supports CEL (Kubernetes >= 1.25)."""
    pool = _schema("HelixCluster")["properties"]["spec"]["properties"]["nodePools"]["items"]
    messages = [rule["message"] for rule in pool["x-kubernetes-validations"]]
    assert any("gpuType or gpuTypeLabel" in m for m in messages)
    assert any("maxNodes" in m for m in messages)
    liveness = _schema("HelixCluster")["properties"]["spec"]["properties"]["liveness"]
    assert [rule["rule"] for rule in liveness["x-kubernetes-validations"]] == [
        "self.leaseSeconds > self.heartbeatSeconds + self.hungSeconds"]


def test_examples_keep_every_field() -> None:
    """Nothing in an example is silently pruned by the API server (a misspelt field would be)."""
    for path in EXAMPLES:
        for doc in load_documents(path):
            assert pruned_fields(_schema(doc["kind"]), doc) == [], path.name


def test_printer_columns() -> None:
    version = crd.helixcluster_crd()["spec"]["versions"][0]
    columns = {c["name"]: c.get("priority", 0) for c in version["additionalPrinterColumns"]}
    assert columns == {"Phase": 0, "Ready": 0, "Nodes": 0, "Pipelines": 0, "Planned tok/s": 0, "Gap": 0, "URL": 0,
                       "Age": 0, "Plan": 1, "Observed tok/s": 1}
    url = next(c for c in version["additionalPrinterColumns"] if c["name"] == "URL")
    assert url["jsonPath"] == ".status.url" and "url" in crd.helixcluster_status_schema()["properties"]
    assert version["subresources"] == {"status": {}}
    assert crd.helixcluster_crd()["spec"]["names"]["shortNames"] == ["hxc"]
    assert crd.gpuprofile_crd()["spec"]["scope"] == "Cluster"


def _readme_manifests() -> list[dict[str, Any]]:
    """Every YAML block of the README and docs/ that is a HelixCluster or GPUProfile."""
    text = "\n".join(path.read_text() for path in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))])
    blocks = [block.split("```", 1)[0] for block in text.split("```yaml\n")[1:]]
    documents = [doc for block in blocks for doc in yaml.load_all(block, Loader=KubeYamlLoader)
                 if isinstance(doc, dict)]
    return [doc for doc in documents if doc.get("kind") in ("HelixCluster", "GPUProfile")]


def test_readme_manifests_validate_against_crd() -> None:
    manifests = _readme_manifests()
    assert {doc["kind"] for doc in manifests} == {"HelixCluster", "GPUProfile"}
    for doc in manifests:
        assert _errors(doc["kind"], doc) == []
