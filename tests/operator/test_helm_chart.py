"""The Helm chart without helm: values against their schema, template references against
values, CRD copies against crds/, RBAC and Deployment invariants, and the operator image."""

import argparse
import json
import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from chartrender import Renderer, values_with
from opkit import REPO

from helix_operator.commands import register

CHART = REPO / "helm" / "helix-operator"
TEMPLATES = sorted((CHART / "templates").glob("*"))
VALUES = yaml.safe_load((CHART / "values.yaml").read_text())
SCHEMA = json.loads((CHART / "values.schema.json").read_text())
VALUES_REF = re.compile(r"\$?\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")


def _errors(values: dict[str, Any]) -> list[str]:
    return [e.message for e in jsonschema.Draft7Validator(SCHEMA).iter_errors(values)]


def _used_paths() -> set[tuple[str, ...]]:
    return {tuple(m.group(1).strip(".").split(".")) for t in TEMPLATES for m in VALUES_REF.finditer(t.read_text())}


def _leaves(value: Any, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    if isinstance(value, dict) and value:
        return {leaf for k, v in value.items() for leaf in _leaves(v, prefix + (k,))}
    return {prefix}


def test_values_validate_against_schema() -> None:
    assert _errors(VALUES) == []


def test_every_values_path_in_templates_exists_in_values() -> None:
    for path in _used_paths():
        node: Any = VALUES
        for key in path:
            assert isinstance(node, dict) and key in node, f".Values.{'.'.join(path)} is not in values.yaml"
            node = node[key]


def test_every_value_is_used_by_a_template() -> None:
    used = _used_paths()
    unused = [leaf for leaf in _leaves(VALUES) if not any(leaf[:len(p)] == p for p in used)]
    assert unused == []


BAD_VALUES = [
    ("unknown key", {"replica": 2}),
    ("replicas type", {"replicas": "two"}),
    ("pull policy", {"image": {**VALUES["image"], "pullPolicy": "Sometimes"}}),
    ("namespace name", {"watchNamespaces": ["Team_A"]}),
    ("cluster-wide type", {"clusterWide": "yes"}),
    ("cluster-wide and namespaces", {"clusterWide": True, "watchNamespaces": ["team-a"]}),
    ("port range", {"metrics": {**VALUES["metrics"], "port": 70000}}),
    ("planner threads", {"planner": {"threads": 0}}),
    ("observe interval", {"observe": {"intervalSeconds": 0}}),
    ("quantity", {"resources": {"requests": {"memory": "lots"}}}),
]


@pytest.mark.parametrize("override", [b[1] for b in BAD_VALUES], ids=[b[0] for b in BAD_VALUES])
def test_schema_rejects_bad_values(override: dict[str, Any]) -> None:
    assert _errors({**VALUES, **override})


def test_chart_ships_the_generated_crds() -> None:
    for path in sorted((REPO / "crds").glob("*.yaml")):
        assert (CHART / "files" / "crds" / path.name).read_text() == path.read_text(), f"copy crds/{path.name}"


def test_template_actions_are_closed() -> None:
    for template in TEMPLATES:
        outside = re.sub(r"\{\{.*?\}\}", "", template.read_text(), flags=re.S)
        assert "{{" not in outside, template.name


def test_rbac_is_least_privilege() -> None:
    text = "".join((CHART / "templates" / name).read_text() for name in ("rbac.yaml", "_helpers.tpl"))
    rules = re.findall(r"- \{apiGroups: \[([^\]]*)\], resources: \[([^\]]*)\], verbs: \[([^\]]*)\]\}", text)
    verbs = {resource.strip(): set(v.replace(" ", "").split(",")) for _, resource, v in rules}
    assert verbs["nodes"] == {"get", "list", "watch"} and verbs["gpuprofiles"] == {"get", "list", "watch"}
    cluster_scoped_writes = {r for r, v in verbs.items() if v & {"create", "update", "patch", "delete"}
                             and r in ("nodes", "gpuprofiles", "customresourcedefinitions", "namespaces")}
    assert cluster_scoped_writes == set()
    assert verbs["pods"] >= {"create", "delete", "patch", "list", "watch"}
    assert verbs["helixclusters/status"] == {"get", "patch"}


def test_deployment_runs_one_recreated_peered_replica_with_flags_the_cli_knows() -> None:
    deployment = (CHART / "templates" / "deployment.yaml").read_text()
    assert VALUES["replicas"] == 1 and "type: Recreate" in deployment
    pod = _render().documents("deployment.yaml")[0]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and "readOnlyRootFilesystem: true" in deployment
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    flags = re.findall(r"- (--[a-z-]+)=", deployment)
    assert "--peering" in flags
    args = parser.parse_args(["operator", "run", *(f"{flag}=1" for flag in flags)])
    assert args.peering == "1" and args.namespace == ["1"]


def test_operator_image_is_non_root_and_installs_the_pinned_project() -> None:
    dockerfile = (REPO / "docker" / "Dockerfile.operator").read_text()
    assert re.search(r"^USER 10001", dockerfile, re.M)
    assert re.search(r"pip install [^\n]*'\.\[operator\]'", dockerfile)
    assert 'ENTRYPOINT ["helix", "operator", "run"]' in dockerfile
    pod_spec = _render().documents("deployment.yaml")[0]["spec"]["template"]["spec"]
    assert pod_spec["securityContext"]["runAsUser"] == 10001


def test_crds_command_writes_what_is_committed(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["operator", "crds", "--out", str(tmp_path)])
    assert args.func(args) == 0
    for path in sorted((REPO / "crds").glob("*.yaml")):
        assert (tmp_path / path.name).read_text() == path.read_text()


RELEASE_NAMESPACE = "helix-system"


def _render(**overrides: Any) -> Renderer:
    values = values_with(VALUES, overrides)
    assert _errors(values) == []
    return Renderer(CHART, values, RELEASE_NAMESPACE)


def _rules(role: dict[str, Any]) -> dict[str, set[str]]:
    return {resource: set(rule["verbs"]) for rule in role["rules"] for resource in rule["resources"]}


def _scope(chart: Renderer) -> tuple[list[tuple[str, str | None]], list[str], list[tuple[str, str | None]]]:
    """Where the operator may create pods (role kind, namespace), the namespaces its kopf
    settings watch (none: all), and its peering objects."""
    rbac = chart.documents("rbac.yaml")
    writers = [(o["kind"], o["metadata"].get("namespace")) for o in rbac
               if o["kind"] in ("Role", "ClusterRole") and "create" in _rules(o).get("pods", set())]
    bound = {(o["roleRef"]["kind"], o["metadata"].get("namespace")) for o in rbac if o["kind"].endswith("Binding")}
    assert set(writers) <= bound, "every role that writes is bound"
    deployment, = chart.documents("deployment.yaml")
    flags = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    namespaces = parser.parse_args(["operator", "run", *flags]).namespace
    peering = [(o["kind"], o["metadata"].get("namespace")) for o in chart.documents("peering.yaml")]
    return writers, namespaces, peering


def test_rbac_and_watch_are_namespaced_by_default() -> None:
    chart = _render()
    assert _scope(chart) == ([("Role", RELEASE_NAMESPACE)], [RELEASE_NAMESPACE], [("KopfPeering", RELEASE_NAMESPACE)])
    for role in (o for o in chart.documents("rbac.yaml") if o["kind"] == "ClusterRole"):
        assert set().union(*_rules(role).values()) <= {"get", "list", "watch"}, "cluster-wide rights only read"
    binding = next(o for o in chart.documents("rbac.yaml") if o["kind"] == "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "helix-operator", "namespace": RELEASE_NAMESPACE}]


def test_watch_namespaces_get_a_role_each() -> None:
    writers, namespaces, peering = _scope(_render(watchNamespaces=["team-a", "team-b"]))
    assert writers == [("Role", "team-a"), ("Role", "team-b")] and namespaces == ["team-a", "team-b"]
    assert peering == [("KopfPeering", "team-a"), ("KopfPeering", "team-b")]


def test_cluster_wide_only_when_asked() -> None:
    chart = _render(clusterWide=True)
    assert _scope(chart) == ([("ClusterRole", None)], [], [("ClusterKopfPeering", None)])
    cluster = next(o for o in chart.documents("rbac.yaml") if o["metadata"]["name"] == "helix-operator-cluster")
    assert "clusterkopfpeerings" in _rules(cluster)
    assert "clusterkopfpeerings" not in _rules(next(o for o in _render().documents("rbac.yaml")
                                                    if o["metadata"]["name"] == "helix-operator-cluster"))


def test_operator_may_ensure_every_child_it_builds() -> None:
    """kube.ensure reads, creates and patches; NetworkPolicies are children too."""
    role = next(o for o in _render().documents("rbac.yaml") if o["kind"] == "Role")
    for plural in ("pods", "configmaps", "services", "deployments", "networkpolicies"):
        assert {"get", "create", "patch"} <= _rules(role)[plural], plural


def test_the_chart_works_as_a_subchart_with_its_names_and_pod_security_context_overridden() -> None:
    """An umbrella chart passes `global`, and may rename the objects or add fsGroup."""
    chart = _render(**{"global": {"imageRegistry": "registry.example"}}, fullnameOverride="helix",
                    podSecurityContext={"fsGroup": 10001})
    deployment, = chart.documents("deployment.yaml")
    assert deployment["metadata"]["name"] == "helix"
    assert {o["metadata"]["name"] for o in chart.documents("rbac.yaml")} >= {"helix", "helix-cluster"}
    assert deployment["spec"]["template"]["spec"]["securityContext"] == {
        "fsGroup": 10001, "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"}}
    renamed, = _render(nameOverride="inference-operator").documents("deployment.yaml")
    assert renamed["metadata"]["name"] == "helix-operator-inference-operator"
    assert renamed["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "inference-operator"


@pytest.mark.parametrize("override", [{"fullnameOverride": "Helix_Op"}, {"podSecurityContext": {"runAsUser": -1}},
                                      {"global": "registry"}], ids=["fullname", "uid", "global"])
def test_schema_rejects_bad_subchart_values(override: dict[str, Any]) -> None:
    assert _errors(values_with(VALUES, override))
