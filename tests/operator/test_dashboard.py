"""The Grafana dashboard: valid JSON whose every query reads a metric the front end or a stage exports,
covering what vLLM's own dashboard reads, and the chart's ConfigMap that ships it when enabled."""

import json
import re

import jsonschema
import yaml
from chartrender import Renderer, values_with
from opkit import REPO
from prometheus_client import CollectorRegistry

from helix_worker.metrics import FrontendMetrics, StageMetrics

CHART = REPO / "helm" / "helix-operator"
DASHBOARD = CHART / "files" / "dashboards" / "helix.json"
SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{")
LABEL_VALUES = re.compile(r"label_values\(([A-Za-z_:][A-Za-z0-9_:]*)")
# Every metric vLLM's example Grafana dashboard (examples/observability/prometheus_grafana) queries.
VLLM_DASHBOARD = {"vllm:e2e_request_latency_seconds_bucket", "vllm:e2e_request_latency_seconds_sum",
                  "vllm:e2e_request_latency_seconds_count", "vllm:prompt_tokens_total",
                  "vllm:generation_tokens_total", "vllm:inter_token_latency_seconds_bucket",
                  "vllm:num_requests_running", "vllm:num_requests_waiting",
                  "vllm:time_to_first_token_seconds_bucket", "vllm:kv_cache_usage_perc",
                  "vllm:request_prompt_tokens_bucket", "vllm:request_generation_tokens_bucket",
                  "vllm:request_success_total", "vllm:request_queue_time_seconds_sum",
                  "vllm:request_prefill_time_seconds_sum", "vllm:request_decode_time_seconds_sum",
                  "vllm:request_max_num_generation_tokens_sum"}
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _series(registry: CollectorRegistry) -> set[str]:
    """The sample names a registry's families produce once observed."""
    return {f.name + suffix for f in registry.collect() for suffix in SUFFIXES[f.type]}


EXPORTED = _series(FrontendMetrics("m").registry) | _series(StageMetrics("n", "m").registry)


def _queries(dashboard: dict) -> list[str]:
    targets = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    variables = [v["query"]["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    return targets + variables


def test_every_dashboard_query_reads_an_exported_metric_of_the_selected_model() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = _queries(dashboard)
    assert len(queries) > 20
    read = set()
    for query in queries:
        names = SELECTOR.findall(query) + LABEL_VALUES.findall(query)
        assert names, f"no metric in {query!r}"
        read.update(names)
        if not query.startswith("label_values"):
            assert query.count('model_name="$model_name"') == len(names), query
    assert read - EXPORTED == set()
    assert {"helix_failovers_total", "helix_pipeline_up", "helix_stage_step_seconds_bucket"} <= read


def test_the_metrics_vllm_dashboards_read_are_exported() -> None:
    assert set() == VLLM_DASHBOARD - EXPORTED


def test_chart_renders_the_dashboard_configmap_for_grafanas_sidecar_only_when_enabled() -> None:
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    assert Renderer(CHART, defaults, "helix-system").documents("dashboards.yaml") == []
    values = values_with(defaults, {"grafana": {"dashboards": {"enabled": True, "namespace": "monitoring",
                                                               "annotations": {"grafana_folder": "Helix"}}}})
    schema = json.loads((CHART / "values.schema.json").read_text())
    jsonschema.validate(values, schema)
    [config_map] = Renderer(CHART, values, "helix-system").documents("dashboards.yaml")
    assert config_map["kind"] == "ConfigMap" and config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert config_map["metadata"]["annotations"] == {"grafana_folder": "Helix"}
    assert json.loads(config_map["data"]["helix.json"]) == json.loads(DASHBOARD.read_text())
    bad = values_with(values, {"grafana": {"dashboards": {"labels": {"grafana_dashboard": 1}}}})
    assert list(jsonschema.Draft7Validator(schema).iter_errors(bad)), "label values are strings"
